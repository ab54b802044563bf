"""The format filter: answers in the declared shape are kept (normalised), others dropped with the rule."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from filters.base import build_filter
from filters.format import render_numbered, split_items, strip_numbering

DATA = Path(__file__).parent / "data"
# The medical answer shape, expressed through config only (filters/ stays generic).
MEDICAL = {
    "list_fields": ["diseases", "reason"],
    "name_fields": ["diseases"],
    "max_item_chars": {"diseases": 30, "reason": 300},
}
CASES = [json.loads(line) for line in (DATA / "filters_answers.jsonl").read_text().splitlines()]


class Answer(BaseModel):
    """A test schema: at least two reasons, at most three diseases."""

    diseases: list[str] = Field(max_length=3)
    reason: list[str] = Field(min_length=2)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_fixture_answers(case):
    record = copy.deepcopy(case["record"])
    verdict = build_filter("format", MEDICAL)(record)
    if case["expect"] is True:
        assert verdict is True
        for key, value in case.get("normalized", {}).items():
            assert record[key] == value
    else:
        assert verdict[0] is False
        assert verdict[1].split(":")[0] == case["expect"], verdict[1]


def test_stats_count_the_records_normalisation_rewrote():
    flt = build_filter("format", MEDICAL)
    assert flt({"diseases": ["肺炎"], "reason": ["发热3天"]}) is True
    assert flt({"diseases": "肺炎、胸腔积液", "reason": ["发热3天"]}) is True
    assert flt.stats() == {"normalized": 1}


def test_the_same_content_in_other_surface_forms_normalises_equal():
    forms = [
        "1. 高血压；2. 糖尿病",
        "高血压|糖尿病",
        "高血压、糖尿病",
        ["①高血压", "②糖尿病。"],
        "1)高血压\n2)糖尿病",
    ]
    assert all(split_items(form, "name") == ["高血压", "糖尿病"] for form in forms)
    points = ["血压160/100mmHg，收缩压≥140mmHg", "体温37.5℃，伴咳嗽、咳痰"]
    rendered = render_numbered(points)
    assert rendered == "1. 血压160/100mmHg，收缩压≥140mmHg；\n2. 体温37.5℃，伴咳嗽、咳痰"
    assert split_items(rendered, "point") == points
    assert split_items(rendered.replace("\n", ""), "point") == points
    assert strip_numbering("（3）2型糖尿病；") == "2型糖尿病；"  # leading numbering only
    assert strip_numbering("37.5℃发热") == "37.5℃发热"


def test_point_items_keep_enumeration_commas_and_decimals():
    assert split_items("体温37.5℃，无尿频、尿急、尿痛", "point") == ["体温37.5℃，无尿频、尿急、尿痛"]
    assert split_items("1型糖尿病、高血压", "name") == ["1型糖尿病", "高血压"]


def test_without_normalisation_numbering_and_punctuation_are_rule_failures():
    raw = dict(MEDICAL, normalize=False)
    verdict = build_filter("format", raw)({"diseases": ["1. 肺炎"], "reason": ["发热3天", "咳嗽"]})
    assert verdict[1].startswith("numbering:")
    verdict = build_filter("format", raw)({"diseases": ["肺炎；"], "reason": ["发热3天", "咳嗽"]})
    assert verdict[1].startswith("trailing punctuation:")
    verdict = build_filter("format", raw)({"diseases": ["肺炎"], "reason": ["发热3天\n2. 咳嗽"]})
    assert verdict[1].startswith("not renderable:")


def test_schema_model_is_validated_after_normalisation():
    options = dict(MEDICAL, schema=f"{__name__}:Answer")
    flt = build_filter("format", options)
    record = {"diseases": "肺炎；胸腔积液", "reason": "1. 发热3天；\n2. 右下肺湿啰音"}
    assert flt(record) is True and record["diseases"] == ["肺炎", "胸腔积液"]
    verdict = flt({"diseases": ["肺炎"], "reason": ["发热3天"]})
    assert verdict[0] is False and verdict[1].startswith("schema: Answer.reason")
    verdict = flt({"diseases": "甲病、乙病、丙病、丁病", "reason": ["发热3天", "咳嗽"]})
    assert verdict[1].startswith("schema: Answer.diseases")


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="cannot load schema"):
        build_filter("format", {"schema": "no.such.module:Answer"})
    with pytest.raises(ValueError, match="not in list_fields"):
        build_filter("format", {"list_fields": ["reason"], "name_fields": ["diseases"]})
    with pytest.raises(ValueError):
        build_filter("format", {"list_fields": ["reason"], "max_len": 3})


def test_truncation_check_can_be_switched_off():
    record = {"diseases": ["肺炎"], "reason": ["发热3天"], "meta": {"finish_reason": "length"}}
    assert build_filter("format", dict(MEDICAL, drop_truncated=False))(record) is True
