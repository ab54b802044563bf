"""The leakage filter: planted copies of test records go, distinct patients sharing template text stay."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest

from filters.base import build_filter
from filters.leakage import normalize_text

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "healthai2025"
INSERTED = "患者精神可，睡眠饮食尚可，大小便正常。"


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def respaced(text: str) -> str:
    return text.replace(": ", ":").replace("，", " ， ").replace("\n", "\n\n  ")


def repunctuated(text: str) -> str:
    table = str.maketrans({"，": ",", "；": "。", "：": ":", "（": "(", "）": ")", "、": "，"})
    return text.translate(table).replace("1", "１").replace("。\n", "\n")


def with_sentence(text: str) -> str:
    head, sep, tail = text.partition("\n现病史: ")
    return head + sep + INSERTED + tail


PLANTERS = {
    "exact": lambda t: t,
    "respaced": respaced,
    "repunctuated": repunctuated,
    "inserted": with_sentence,
}


def plant(records: list[dict]) -> list[dict]:
    return [
        {"id": f"{kind}-{r['id']}", "feature_content": make(r["feature_content"])}
        for r in records
        for kind, make in PLANTERS.items()
    ]


@pytest.fixture
def test_files(tmp_path: Path) -> Path:
    cases = load("filters_cases.jsonl")
    for name, part in (("test_a.jsonl", cases[:6]), ("test_b.jsonl", cases[6:])):
        (tmp_path / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
    return tmp_path


def test_normalisation_folds_width_spacing_and_punctuation():
    assert normalize_text("体温：３９．２℃ ， 咳嗽（+）\n") == normalize_text("体温:39.2℃,咳嗽(+)")
    assert normalize_text("ALT 96U/L") == "alt96ul"


def test_planted_copies_go_and_distinct_patients_stay(test_files: Path):
    leakage = build_filter("leakage", {"test": ["test_a.jsonl", "test_b.jsonl"]}, base_dir=test_files)
    planted = plant(load("filters_cases.jsonl"))
    verdicts = {r["id"]: leakage(r) for r in planted}
    assert all(v is not True for v in verdicts.values()), [k for k, v in verdicts.items() if v is True]
    assert verdicts["exact-c01"][1].startswith("exact copy in test_a.jsonl: test id 'c01'")
    assert verdicts["respaced-c07"][1].startswith("exact copy in test_b.jsonl")
    assert verdicts["repunctuated-c07"][1].startswith("exact copy in test_b.jsonl")
    inserted = verdicts["inserted-c07"][1]
    assert inserted.startswith(("ngram overlap in test_b.jsonl", "contains test record in test_b.jsonl"))
    assert "'c07'" in inserted
    others = load("filters_other_cases.jsonl")
    assert [leakage(r) for r in others] == [True] * len(others)
    stats = leakage.stats()
    for name in ("test_a.jsonl", "test_b.jsonl"):
        counts = stats["removed"][name]
        assert counts.pop("exact copy") == 18  # exact, re-spaced and re-punctuated copies of 6 records
        assert sum(counts.values()) == 6 and set(counts) <= {"ngram overlap", "contains test record"}
    assert stats["checked"] == len(planted) + len(others)


def test_without_the_core_template_sharing_patients_are_lost(test_files: Path):
    core = build_filter("leakage", {"test": ["test_a.jsonl", "test_b.jsonl"]}, base_dir=test_files)
    whole = build_filter(
        "leakage", {"test": ["test_a.jsonl", "test_b.jsonl"], "core": False}, base_dir=test_files
    )
    others = load("filters_other_cases.jsonl")
    lost = sum(whole(r) is not True for r in others)
    assert lost >= 2 and all(core(r) is True for r in others)
    assert core.stats()["core_changed"] == lost


def test_rouge_option_catches_heavy_paraphrase(test_files: Path):
    case = load("filters_cases.jsonl")[2]
    rng = random.Random(5)

    def garble(line: str) -> str:  # every 5th character replaced: no 13-gram survives, the order does
        label, sep, body = line.partition(": ")
        chars = list(body)
        for i in range(2, len(chars), 5):
            chars[i] = rng.choice("甲乙丙丁")
        return label + sep + "".join(chars)

    lines = case["feature_content"].split("\n")
    clinical = ("主诉", "现病史", "既往史", "辅助检查")
    paraphrase = {
        "id": "p",
        "feature_content": "\n".join(garble(x) if x.split(":")[0] in clinical else x for x in lines),
    }
    options = {"test": ["test_a.jsonl"]}
    assert build_filter("leakage", options, base_dir=test_files)(paraphrase) is True
    verdict = build_filter("leakage", {**options, "rouge_threshold": 0.6}, base_dir=test_files)(paraphrase)
    assert verdict[0] is False and verdict[1].startswith("rouge_l in test_a.jsonl") and "'c03'" in verdict[1]


def test_bad_test_file_is_one_clear_error(tmp_path: Path):
    (tmp_path / "broken.jsonl").write_text('{"id": 1, "feature_content": "x"}\n{"id": 2, \n')
    with pytest.raises(Exception, match=r"broken.jsonl:2: not valid JSON"):
        build_filter("leakage", {"test": ["broken.jsonl"]}, base_dir=tmp_path)
    with pytest.raises(Exception, match="cannot open"):
        build_filter("leakage", {"test": ["missing.jsonl"]}, base_dir=tmp_path)


def test_real_test_set_planted_copies_and_template_sharing_cases():
    files = sorted(SHARED.glob("*camp_data_step_*_without_answer.jsonl"))
    if len(files) < 2:
        pytest.skip(f"real data absent: {SHARED} (see /work/shared/data/README.md)")
    step1, step2 = ([orjson.loads(line) for line in path.open("rb")] for path in files)
    rng = random.Random(2)
    planted = plant(rng.sample(step1, 60))
    seen = {normalize_text(r["feature_content"]) for r in step1}
    others = [r for r in rng.sample(step2, 400) if normalize_text(r["feature_content"]) not in seen]
    core = build_filter("leakage", {"test": [str(files[0])]})
    whole = build_filter("leakage", {"test": [str(files[0])], "core": False, "containment": 0})
    assert all(core(r) is not True for r in planted)
    flagged_core = sum(core(r) is not True for r in others)
    flagged_whole = sum(whole(r) is not True for r in others)
    # Step 2 holds real revisits of step-1 patients (those flags are right); the template is the rest.
    assert flagged_core * 3 < flagged_whole


def test_containment_catches_a_sentence_inserted_into_a_short_record(tmp_path: Path):
    short = {
        "id": "short",
        "feature_content": "性别: 男\n年龄: 8\n主诉: 打鼾3年\n现病史: 夜间打鼾，张口呼吸\n既往史: \n个人史: ",
    }
    write = [*load("filters_cases.jsonl"), short]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in write))
    planted = {"id": "p", "feature_content": with_sentence(short["feature_content"])}
    verdict = build_filter("leakage", {"test": ["test.jsonl"]}, base_dir=tmp_path)(planted)
    assert verdict[0] is False and verdict[1].startswith("contains test record in test.jsonl")
    assert "'short'" in verdict[1]
    # the inserted sentence is most of this record's n-grams: without containment the copy stays
    assert (
        build_filter("leakage", {"test": ["test.jsonl"], "containment": 0}, base_dir=tmp_path)(planted)
        is True
    )
