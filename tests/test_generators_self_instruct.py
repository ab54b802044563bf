"""`self_instruct` end to end against the fake server: rounds whose prompts show the records accepted in
earlier rounds, ROUGE-L near-duplicates (of the seed pool or of each other) dropped by the filter chain,
seeded demo choice, and a resume that asks for nothing again."""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path
from typing import Any

from generators.medical.schema import render_record
from tests.engine_helpers import engine, outcomes
from tests.test_generators_medical import FIXTURES, medical_spec, user_texts

SELF_INSTRUCT = """
[[stages]]
name = "si"
generator = "self_instruct"
provider = "teacher"
pool = ["medical_pool.jsonl"]
rounds = 2
per_round = 3
demos = 4
generated_demos = 2
json_mode = "json_object"

[[stages.filters]]
kind = "rouge_dedupe"
seed = "medical_pool.jsonl"
threshold = 0.7
"""


def case(sex: str, age: int, complaint: str, history: str, exam: str, tests: str) -> dict[str, str]:
    return {
        "性别": sex,
        "年龄": str(age),
        "主诉": complaint,
        "现病史": history,
        "体格检查": exam,
        "辅助检查": tests,
    }


NEW = case("男", 35, "右上腹绞痛6小时", "进食油腻食物后右上腹阵发性绞痛，向右肩背部放射，伴恶心呕吐。",
           "墨菲征阳性，右上腹压痛。", "腹部超声：胆囊增大，壁增厚，胆囊颈部强回声伴声影。")  # fmt: skip
NEAR_NEW = {**NEW, "年龄": "36", "主诉": "右上腹绞痛7小时"}
POOL_P02 = json.loads((FIXTURES / "medical_pool.jsonl").read_text().splitlines()[1])["feature_content"]
NEAR_POOL = {line.split(": ")[0]: line.split(": ", 1)[1] for line in POOL_P02.splitlines()} | {"年龄": "27"}
LATER = [
    case("女", 63, "视物模糊1年", "1年来双眼渐进性无痛性视力下降，看灯光有光晕，无眼痛。",
         "双眼晶状体混浊。", "视力：右眼0.3，左眼0.4；眼压正常。"),
    case("男", 2, "腹泻伴呕吐2天", "2天前出现蛋花汤样稀水便，每日8-10次，伴呕吐、尿量减少。",
         "前囟凹陷，皮肤弹性差。", "大便轮状病毒抗原阳性；血钠132mmol/L。"),
    case("女", 55, "颈部肿物3月", "3月前发现颈前无痛性肿物，随吞咽上下活动，无声音嘶哑。",
         "甲状腺右叶可触及2cm结节，质硬。", "超声：甲状腺右叶低回声结节，可见微钙化。"),
]  # fmt: skip


def answers_in_order(records: list[dict[str, str]]) -> Any:
    """The fake teacher: the i-th request (preflight aside) gets the i-th record, as JSON."""
    queue = collections.deque(records)

    def teacher(body: dict[str, Any]) -> str:
        if user_texts(body)[-1] == "ping":
            return "pong"
        return json.dumps(queue.popleft(), ensure_ascii=False)

    return teacher


def round_prompts(server: Any) -> list[str]:
    return [user_texts(b)[-1] for b in server.bodies if "份病历示例" in user_texts(b)[-1]]


def test_rounds_see_accepted_records_and_near_duplicates_are_dropped(tmp_path: Path, fake_server) -> None:
    spec = medical_spec(tmp_path, fake_server.url, SELF_INSTRUCT)
    fake_server.set(answer=answers_in_order([NEW, NEAR_NEW, NEAR_POOL, *LATER]))
    engine("run", spec, "--quiet")

    kept = outcomes(tmp_path / "out", "si", "kept")
    rejected = outcomes(tmp_path / "out", "si", "rejected")
    assert len(kept) == 4 and len(rejected) == 2
    first = kept[0]
    assert first["id"].startswith("si-r000-") and first["feature_content"] in {
        render_record(NEW),
        render_record(NEAR_NEW),
    }
    assert [r["id"][:7] for r in kept[1:]] == ["si-r001"] * 3
    reasons = sorted(r["reason"] for r in rejected)
    assert "vs seed id 'p02'" in reasons[0] or "vs seed id 'p02'" in reasons[1]
    assert any(f"vs id {first['id']!r}" in reason for reason in reasons)
    assert all(r["filter"] == "rouge_dedupe" for r in rejected)

    prompts = round_prompts(fake_server)
    assert len(prompts) == 6
    # round 0 shows 4 pool records; round 1 shows 3 pool records + the one record accepted so far
    assert all(first["feature_content"] not in p for p in prompts[:3])
    assert all(first["feature_content"] in p for p in prompts[3:])
    assert all(re.findall(r"示例(\d)：", p) == ["1", "2", "3", "4"] for p in prompts)
    assert all(len(r["demo_ids"]) == 4 for r in kept) and first["id"] in kept[1]["demo_ids"]

    requests = fake_server.requests
    resume = engine("run", spec, "--progress-every", "0")  # replays the rounds from the journal, asks nothing
    assert fake_server.requests == requests
    assert "si: 6/6 (100%)" in resume.stderr  # the progress total is known: rounds x per_round
    assert outcomes(tmp_path / "out", "si", "kept") == kept


def test_round_prompts_follow_the_run_seed(tmp_path: Path, fake_server) -> None:
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        fake_server.reset_counts()
        fake_server.set(answer=answers_in_order([NEW, NEAR_NEW, NEAR_POOL, *LATER]))
        engine("run", medical_spec(tmp_path / name, fake_server.url, SELF_INSTRUCT, seed=seed), "--quiet")
        runs[name] = round_prompts(fake_server)[:3]  # round 0: its demos depend on the seed alone
    assert sorted(runs["a"]) == sorted(runs["b"])
    assert sorted(runs["a"]) != sorted(runs["c"])


def test_plain_text_records_are_accepted_and_broken_ones_rejected_with_raw_text(
    tmp_path: Path, fake_server
) -> None:
    stages = SELF_INSTRUCT.replace('json_mode = "json_object"', 'json_mode = "off"\nmax_bad_output = 1')
    spec = medical_spec(tmp_path, fake_server.url, stages.replace("rounds = 2", "rounds = 1"))
    as_text = "以下是新病历：\n" + render_record(LATER[0])
    queue = collections.deque([as_text, "性别: 女\n年龄: 30", json.dumps(LATER[1], ensure_ascii=False)])
    fake_server.set(answer=lambda body: "pong" if user_texts(body)[-1] == "ping" else queue.popleft())
    engine("run", spec, "--quiet")

    kept = outcomes(tmp_path / "out", "si", "kept")
    assert sorted(r["feature_content"] for r in kept) == sorted(
        [render_record(LATER[0]), render_record(LATER[1])]
    )
    (bad,) = outcomes(tmp_path / "out", "si", "rejected")
    assert (
        bad["filter"] == "parse"
        and "lacks 主诉, 现病史" in bad["reason"]
        and bad["raw_text"] == "性别: 女\n年龄: 30"
    )
    body = next(b for b in fake_server.bodies if "份病历示例" in str(b))
    assert "response_format" not in body
