"""Reading and writing the official submission format, byte for byte against the competition's example."""

from pathlib import Path

import pytest

from engine.errors import SpecError
from evals.submission import (
    SubmissionFormat,
    dumps_submission_line,
    format_diseases,
    format_reason,
    load_answers,
    read_submission,
    write_submission,
)

FIXTURE = Path(__file__).parent / "data" / "eval_submission.jsonl"
OFFICIAL = Path(__file__).parents[2] / "shared" / "data" / "healthai2025" / "20250214171329_提交示例.jsonl"


def test_fixture_round_trips_byte_for_byte(tmp_path):
    records = read_submission(FIXTURE)
    assert records[0]["diseases"] == ["原发性高血压（2级）", "冠状动脉粥样硬化性心脏病"]
    assert records[2]["reason"][1] == "空腹血糖9.8mmol/L，糖化血红蛋白7.6%，达到糖尿病诊断标准"
    out = tmp_path / "submission.jsonl"
    assert write_submission(records, out) == 4
    assert out.read_bytes() == FIXTURE.read_bytes()


@pytest.mark.skipif(not OFFICIAL.exists(), reason=f"official example not found at {OFFICIAL}")
def test_official_example_round_trips_byte_for_byte(tmp_path):
    raw = OFFICIAL.read_bytes()
    records = read_submission(OFFICIAL)
    assert [len(r["reason"]) for r in records] == [5, 5, 4]
    assert records[1]["diseases"] == ["高尿酸血症", "皮炎", "失眠", "原发性高血压（1级）"]
    # The example's first two lines join points with a literal backslash-n (our default); its third
    # line joins them with nothing, which the writer reproduces with reason_separator="none".
    write_submission(records[:2], tmp_path / "a.jsonl")
    write_submission(records[2:], tmp_path / "b.jsonl", SubmissionFormat(reason_separator="none"))
    assert (tmp_path / "a.jsonl").read_bytes() + (tmp_path / "b.jsonl").read_bytes() == raw


def test_writer_defaults_follow_the_official_shape():
    record = {
        "id": 5,
        "reason": ["发热3天", "血压140/90mmHg"],
        "diseases": ["发热"],
        "feature_content": "a/b",
    }
    line = dumps_submission_line(record)
    assert line == (
        '{"id":5,"reason":"1. 发热3天；\\\\n2. 血压140\\/90mmHg。",'
        '"diseases":"发热","feature_content":"a\\/b"}'
    )


def test_writer_options():
    points, names = ["发热", "咳嗽"], ["肺炎", "发热"]
    assert format_reason(points, SubmissionFormat(reason_separator="newline")) == "1. 发热；\n2. 咳嗽。"
    assert format_reason(points, SubmissionFormat(reason_separator="none")) == "1. 发热；2. 咳嗽。"
    assert format_reason([]) == ""
    assert format_diseases(names) == "1. 肺炎；2. 发热"
    assert (
        format_diseases(names, SubmissionFormat(disease_numbering=False, disease_separator="、"))
        == "肺炎、发热"
    )
    plain = SubmissionFormat(escape_slash=False)
    assert '"a/b"' in dumps_submission_line(
        {"id": 1, "reason": [], "diseases": [], "feature_content": "a/b"}, plain
    )


def test_writer_renders_string_fields_in_the_configured_format():
    record = {"id": "x", "reason": "1.发热\n2.咳嗽", "diseases": "肺炎|发热", "feature_content": ""}
    assert dumps_submission_line(record) == (
        '{"id":"x","reason":"1. 发热；\\\\n2. 咳嗽。","diseases":"1. 肺炎；2. 发热","feature_content":""}'
    )


def test_failed_write_leaves_existing_file_untouched(tmp_path):
    out = tmp_path / "submission.jsonl"
    out.write_text("previous\n", encoding="utf-8")
    records = [
        {"id": 1, "reason": ["发热"], "diseases": ["发热"], "feature_content": "x"},
        {"id": 2, "reason": []},
    ]
    with pytest.raises(SpecError, match=r"records\[1\]: record 2 has no 'feature_content'"):
        write_submission(records, out)
    assert out.read_text(encoding="utf-8") == "previous\n"
    assert list(tmp_path.iterdir()) == [out]


def test_load_answers_accepts_dicts_with_list_or_string_fields():
    answers = load_answers(
        [
            {"id": 3104, "diseases": ["高血压"], "reason": ["1. 血压150/95mmHg；"]},
            {"id": "7384", "diseases": "1. 发热；2. 咳嗽", "reason": None},
        ]
    )
    assert [(a.key, a.diseases, a.reasons) for a in answers] == [
        ("3104", ["高血压"], ["血压150/95mmHg"]),
        ("7384", ["发热", "咳嗽"], []),
    ]


def test_load_errors_name_file_line_and_record(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "diseases": "发热"}\n\n{"id": 2, "diseases": \n', encoding="utf-8")
    with pytest.raises(SpecError, match=r"bad.jsonl:3: not valid JSON"):
        load_answers(bad)
    bad.write_text('{"id": 1, "feature_content": "x"}\n', encoding="utf-8")
    with pytest.raises(SpecError, match=r"bad.jsonl:1: record 1 has neither 'diseases' nor 'reason'"):
        load_answers(bad)
    bad.write_text('{"diseases": "发热"}\n', encoding="utf-8")
    with pytest.raises(SpecError, match=r"bad.jsonl:1: record has no 'id'"):
        load_answers(bad)
    bad.write_text('{"id": 9, "diseases": 3}\n', encoding="utf-8")
    with pytest.raises(SpecError, match=r"bad.jsonl:1: record 9: field 'diseases' must be"):
        load_answers(bad)
    with pytest.raises(SpecError, match="cannot open"):
        load_answers(tmp_path / "absent.jsonl")
