"""`python -m generators.medical.prepare`: the medical specs' input files derived from the shared data,
checked on a small folder of the same shape (and on the real data when it is there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generators.medical.prepare import CASES_FILE, ROOT, TEST_FILES, case_record, main

SHARED = ROOT.parent / "shared" / "data"


def case(i: int) -> dict:
    return {
        "condition": {
            "gender": "女",
            "age": 30 + i % 40,
            "chiefComplaint": f"咳嗽{i}天",
            "historyOfPresentIllness": "受凉后咳嗽",
            "pastHistory": None,
            "reproductiveHistory": "G1P1",
            "pregnancyAndDelivery": "足月顺产",
            "physicalExamination": "双肺呼吸音粗",
            "auxiliaryExamination": None,
        },
        "diseases": ["急性支气管炎"],
        "analyses": [
            {"description": "受凉后咳嗽", "score": 3.0},
            {"description": "双肺呼吸音粗", "score": 2.0},
        ],
        "diagnoses": [{"reason": "咳嗽", "conclusion": "急性支气管炎"}],
    }


def shared_folder(root: Path, tests: int = 300, cases: int = 320) -> Path:
    for n, name in enumerate(TEST_FILES):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            {"id": n * 1000 + i, "feature_content": f"性别: 男\n年龄: {i}\n主诉: 头痛{i}天"}
            for i in range(tests // 2)
        ]
        path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    (root / CASES_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / CASES_FILE).write_text(json.dumps([case(i) for i in range(cases)], ensure_ascii=False))
    return root


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_case_renders_into_the_competition_record_lines() -> None:
    record = case_record(7, case(7))
    assert record["id"] == "zmdo-0007"
    assert record["feature_content"].splitlines() == [
        "性别: 女", "年龄: 37", "主诉: 咳嗽7天", "现病史: 受凉后咳嗽", "既往史: ", "个人史: ", "过敏史: ",
        "婚育史: G1P1；足月顺产", "流行病史: ", "体格检查: 双肺呼吸音粗", "辅助检查: ",
    ]  # fmt: skip
    assert record["diseases"] == ["急性支气管炎"] and record["reason"] == ["受凉后咳嗽", "双肺呼吸音粗"]


def test_prepare_writes_every_input_and_ignores_itself_in_git(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["--data", str(shared_folder(tmp_path / "shared")), "--out", str(out)]) == 0
    tests, demos = read(out / "test_inputs.jsonl"), read(out / "demos.jsonl")
    assert len(tests) == 300 and len(demos) == 246 and len(read(out / "labelled.jsonl")) == 320
    seeds = read(out / "pool_test200.jsonl")
    assert len(seeds) == 200 and all(s in tests for s in seeds)
    pool = read(out / "self_instruct_pool.jsonl")
    assert pool[:200] == seeds and [r["id"] for r in pool[200:]] == [f"zmdo-{i:04d}" for i in range(246, 296)]
    assert (out / ".gitignore").read_text().splitlines()[-1] == "*"
    again = tmp_path / "again"
    main(["--data", str(tmp_path / "shared"), "--out", str(again)])
    assert read(again / "pool_test200.jsonl") == seeds  # a fixed seed


def test_missing_data_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot read" in err and "--data" in err


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not found at {SHARED}")
def test_prepare_on_the_real_shared_data(tmp_path: Path) -> None:
    assert main(["--data", str(SHARED), "--out", str(tmp_path)]) == 0
    counts = {p.name: len(read(p)) for p in tmp_path.glob("*.jsonl")}
    assert counts == {
        "test_inputs.jsonl": 8000,
        "labelled.jsonl": 1037,
        "demos.jsonl": 246,
        "pool_test200.jsonl": 200,
        "self_instruct_pool.jsonl": 250,
    }
