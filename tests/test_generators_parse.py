"""Reading model answers and building prompts for the medical generators, without a server: JSON in its
many wrappings, numbered free text, generated records, placeholders, seeded demo draws and statistics."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import BadOutput, SpecError
from generators.medical.common import answer_stats
from generators.medical.parse import parse_answer, parse_record
from generators.medical.prompts import DemoPool, fill
from generators.medical.schema import RECORD_FIELDS, REQUIRED_RECORD_FIELDS, answer_schema, render_record

DATA = Path(__file__).parent / "data"
BOTH = ["reason", "diseases"]


@pytest.mark.parametrize(
    "text",
    [
        '{"reason": ["发热3天", "右下肺湿啰音"], "diseases": ["社区获得性肺炎"]}',
        '```json\n{"reason": ["发热3天", "右下肺湿啰音"], "diseases": ["社区获得性肺炎"]}\n```',
        '好的：\n{"reason": ["1. 发热3天；", "2. 右下肺湿啰音。"], "diseases": "社区获得性肺炎"}\n供参考。',
        '{"诊断依据": "1. 发热3天；\\n2. 右下肺湿啰音", "诊断": ["社区获得性肺炎"]}',
        '{"reason": ["发热3天", "右下肺湿啰音",], "diseases": ["社区获得性肺炎"],}',
        "<think>先看症状……</think>\n诊断：社区获得性肺炎\n诊断依据：\n1. 发热3天；\n2. 右下肺湿啰音。",
        "**诊断依据**：\n1. 发热3天\n2. 右下肺湿啰音\n\n**诊断**：社区获得性肺炎",
    ],
)
def test_parse_answer_reads_json_in_any_wrapping_and_numbered_text(text: str) -> None:
    assert parse_answer(text, BOTH) == {"reason": ["发热3天", "右下肺湿啰音"], "diseases": ["社区获得性肺炎"]}


def test_parse_answer_prefers_the_last_json_object_after_echoed_demos() -> None:
    text = '示例回答：{"diseases": ["带状疱疹"]}\n本病例回答：{"diseases": ["急性阑尾炎"]}'
    assert parse_answer(text, ["diseases"]) == {"diseases": ["急性阑尾炎"]}


def test_parse_answer_splits_disease_strings_and_drops_repeats() -> None:
    answer = parse_answer(
        '{"diseases": "1. 高血压（2级，高危）；2. 2型糖尿病；3. 高血压（2级，高危）"}', ["diseases"]
    )
    assert answer == {"diseases": ["高血压（2级，高危）", "2型糖尿病"]}


def test_a_lone_field_may_be_a_bare_numbered_list() -> None:
    assert parse_answer("1. 高血压\n2. 糖尿病", ["diseases"]) == {"diseases": ["高血压", "糖尿病"]}


def test_a_word_starting_like_a_heading_is_not_a_heading() -> None:
    text = "诊断：肺炎\n诊断依据：\n1. 诊断明确的发热史\n2. 湿啰音"
    assert parse_answer(text, BOTH)["reason"] == ["诊断明确的发热史", "湿啰音"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("我无法判断。", "no 'reason'"),
        ('{"reason": ["发热"], "diseases": []}', "no 'diseases'"),
        ('{"reason": ["发热"]}', "no 'diseases'"),
        ('{"reason": ["发热"], "diseases": ["' + "很长" * 40 + '"]}', "longer than"),
    ],
)
def test_unusable_answers_raise_bad_output_with_the_raw_text(text: str, message: str) -> None:
    with pytest.raises(BadOutput, match=message) as caught:
        parse_answer(text, BOTH)
    assert caught.value.raw == text


def test_parse_record_from_json_lines_and_english_keys() -> None:
    fields, required = RECORD_FIELDS, REQUIRED_RECORD_FIELDS
    # a line without a known name (even `血常规：…`) continues the value above it
    lines = "性别: 男\n年龄: 30\n主诉：咳嗽3天\n现病史: 3天前受凉\n后出现咳嗽\n"
    lines += "辅助检查: 胸片正常\n血常规：WBC 11.6"
    assert parse_record(lines, fields, required) == {
        "性别": "男",
        "年龄": "30",
        "主诉": "咳嗽3天",
        "现病史": "3天前受凉\n后出现咳嗽",
        "辅助检查": "胸片正常\n血常规：WBC 11.6",
    }
    as_json = (
        '```json\n{"性别": "女", "年龄": 20, "主诉": "腹痛1天", "现病史": "进食后腹痛", "备注": "x"}\n```'
    )
    assert parse_record(as_json, fields, required) == {
        "性别": "女",
        "年龄": "20",
        "主诉": "腹痛1天",
        "现病史": "进食后腹痛",
    }
    english = '{"gender": "女", "age": 20, "chiefComplaint": "腹痛1天", "historyOfPresentIllness": "进食后"}'
    assert (
        parse_record(
            english,
            fields,
            required,
            {"gender": "性别", "age": "年龄", "chiefComplaint": "主诉", "historyOfPresentIllness": "现病史"},
        )["主诉"]
        == "腹痛1天"
    )
    with pytest.raises(BadOutput, match="lacks 主诉"):
        parse_record('{"性别": "女", "年龄": "20", "主诉": "", "现病史": "x"}', fields, required)


def test_render_record_writes_every_line_in_order_even_empty_ones() -> None:
    text = render_record({"主诉": "咳嗽", "性别": "男"})
    assert text.splitlines()[:3] == ["性别: 男", "年龄: ", "主诉: 咳嗽"]
    assert len(text.splitlines()) == len(RECORD_FIELDS)


def test_fill_leaves_json_braces_and_never_refills_inserted_text() -> None:
    template = '{demos}格式：{"reason": [...]}\n病历：{feature_content}\n已知：{diseases}'
    out = fill(template, demos="", feature_content="主诉: {diseases}", diseases="肺炎")
    assert out == '格式：{"reason": [...]}\n病历：主诉: {diseases}\n已知：肺炎'


def test_demo_draw_is_seeded_by_run_seed_and_record_id_and_never_shows_the_record() -> None:
    pool = DemoPool(DATA / "medical_demos.jsonl")
    record = {"id": "c01", "feature_content": "x"}
    first = [d["id"] for d in pool.draw(3, 7, record)]
    assert first == [d["id"] for d in DemoPool(DATA / "medical_demos.jsonl").draw(3, 7, record)]
    draws = {tuple(d["id"] for d in pool.draw(3, seed, record)) for seed in range(10)}
    assert len(draws) > 5  # the seed matters
    own = pool.records[0]
    assert all(d["id"] != own["id"] for seed in range(20) for d in pool.draw(7, seed, own))
    assert len(pool.draw(100, 1, record)) == len(pool.records)


def test_demo_pool_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "demos.jsonl"
    good = '{"id": 1, "feature_content": "x", "diseases": ["a"], "reason": ["b"]}'
    bad.write_text(good + '\n{"id": 2, "feature_content": "y"}\n')
    with pytest.raises(SpecError, match=r"demos.jsonl:2: demo record has no 'diseases'"):
        DemoPool(bad)


def test_answer_schema_keeps_the_asked_order_and_limits() -> None:
    schema = answer_schema(["reason", "diseases"], max_items=3, max_chars=40)
    assert list(schema["properties"]) == ["reason", "diseases"] == schema["required"]
    assert schema["properties"]["reason"]["maxItems"] == 3
    assert schema["properties"]["diseases"]["items"]["maxLength"] == 40


def test_answer_stats_are_the_figures_the_first_user_tracked() -> None:
    kept = [
        {"feature_content": "a" * 100, "reason": ["12345", "123"], "diseases": ["x"]},
        {"feature_content": "a" * 200, "reason": ["1234"], "diseases": ["x", "y", "z"]},
    ]
    assert answer_stats(kept) == {
        "records": 2,
        "mean_reasons": 1.5,
        "mean_reason_chars": 6.0,
        "mean_diseases": 2.0,
        "mean_record_chars": 150.0,
    }
    assert answer_stats([]) == {"records": 0}
    assert answer_stats([{"feature_content": "abcd"}]) == {"records": 1, "mean_record_chars": 4.0}


def test_bare_prose_is_not_taken_for_a_lone_field() -> None:
    assert parse_answer("急性阑尾炎", ["diseases"]) == {"diseases": ["急性阑尾炎"]}
    with pytest.raises(BadOutput):
        parse_answer("抱歉，我无法回答这个问题。", ["diseases"])
