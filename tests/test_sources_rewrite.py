"""`rewrite_record` end to end against the fake server: free text (question + answer) becomes a record
with every line present, parsed from a JSON answer or from `name: value` lines; an answer without a
chief complaint is rejected; the source is kept as `source_text`."""

from __future__ import annotations

import json
from pathlib import Path

from generators.medical.schema import RECORD_FIELDS
from tests.engine_helpers import engine, outcomes

QA = [
    {"id": "q1", "question": "患者男，45岁，胸痛2小时（标记A）。", "answer": "心电图ST段抬高。"},
    {"id": "q2", "question": "女，30岁，发热咳嗽3天（标记B）。", "answer": "胸片右下肺片状影。"},
    {"id": "q3", "question": "一段没有病人信息的文字（标记C）。", "answer": "无。"},
]
STAGE = """
[[stages]]
name = "rewrite"
generator = "rewrite_record"
provider = "teacher"
input = "qa.jsonl"
json_mode = "json_object"
max_bad_output = 2
"""


def write_spec(folder: Path, url: str) -> Path:
    (folder / "qa.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in QA))
    spec = folder / "spec.toml"
    spec.write_text(
        f'[run]\nname = "rw"\nout = "out"\n\n[providers.teacher]\nkind = "openai"\nbase_url = "{url}"\n'
        f'model = "test-model"\nmax_concurrency = 2\n{STAGE}'
    )
    return spec


def test_free_text_becomes_a_record_with_provenance(tmp_path: Path, fake_server) -> None:
    first = {"性别": "男", "年龄": "45", "主诉": "胸痛2小时", "辅助检查": "心电图ST段抬高"}
    fake_server.script("标记A", json.dumps(first, ensure_ascii=False))
    fake_server.script("标记B", "性别: 女\n年龄: 30\n主诉: 发热咳嗽3天\n辅助检查: 胸片右下肺片状影")
    fake_server.script("标记C", json.dumps({"性别": "", "主诉": ""}))
    engine("run", write_spec(tmp_path, fake_server.url), "--quiet")

    kept = {r["id"]: r for r in outcomes(tmp_path / "out", "rewrite", "kept")}
    assert sorted(kept) == ["q1", "q2"]
    lines = kept["q1"]["feature_content"].splitlines()
    assert [line.split(":")[0] for line in lines] == list(RECORD_FIELDS)  # every line, in order
    assert lines[2] == "主诉: 胸痛2小时" and lines[3] == "现病史: "  # absent in the source: left empty
    assert kept["q1"]["source_text"] == f"question: {QA[0]['question']}\nanswer: {QA[0]['answer']}"
    assert "主诉: 发热咳嗽3天\n" in kept["q2"]["feature_content"]
    assert kept["q2"]["feature_content"].endswith("辅助检查: 胸片右下肺片状影")

    rejected = outcomes(tmp_path / "out", "rewrite", "rejected")
    assert [(r["id"], r["reason"]) for r in rejected] == [("q3", "generated record lacks 主诉")]
    assert rejected[0]["meta"]["attempts"] == 2  # re-sampled within max_bad_output, then rejected

    prompts = [m["content"] for b in fake_server.bodies for m in b.get("messages", []) if m["role"] == "user"]
    asked = next(p for p in prompts if "标记A" in p)
    assert "不得编造" in asked and QA[0]["answer"] in asked
