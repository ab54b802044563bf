"""`python -m engine select`: a planted near-copy of a test record ranks first, an unrelated record last;
--top / --threshold cut the ranking; the leakage filter afterwards removes the near-copy and says so."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from sources.select import chief_complaint, distribution, max_similarity, rank
from tests.engine_helpers import engine, read_lines

SYMPTOMS = ["发热", "咳嗽", "腹痛", "头痛", "胸闷", "腹泻", "皮疹", "关节痛", "心悸", "乏力", "呕吐", "尿频"]
PLACES = ["左侧", "右侧", "双侧", "全身", "上腹", "下腹"]
TEMPLATE = "否认近14天内有中高风险地区旅行史"  # a line every test record repeats: boilerplate


def record(rng: random.Random, rid: str) -> dict[str, str]:
    a, b = rng.sample(SYMPTOMS, 2)
    days = rng.randint(1, 30)
    text = (
        f"性别: {rng.choice('男女')}\n年龄: {rng.randint(1, 90)}\n主诉: {a}{days}天\n"
        f"现病史: {rng.choice(PLACES)}{a}伴{b}{days}天，{rng.choice(PLACES)}{b}加重{rng.randint(1, 9)}次。\n"
        f"流行病史: {TEMPLATE}"
    )
    return {"id": rid, "feature_content": text}


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def corpus(tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(3)
    tests = [record(rng, f"t{i}") for i in range(40)]
    candidates = [record(rng, f"c{i}") for i in range(60)]
    near = tests[7]["feature_content"].replace("天", "日", 1)  # a near-copy with one character changed
    candidates.insert(25, {"id": "near", "feature_content": near})
    candidates.insert(40, {"id": "random", "feature_content": "主诉: qzx vvk 8#@ lorem ipsum 9w"})
    return write(tmp_path / "cand.jsonl", candidates), write(tmp_path / "test.jsonl", tests)


def test_near_copy_first_and_random_last(tmp_path: Path) -> None:
    cand, test = corpus(tmp_path)
    texts = [r["feature_content"] for r in read_lines(cand)]
    tests = [r["feature_content"] for r in read_lines(test)]
    ranked = rank(texts, tests)
    ids = [read_lines(cand)[i]["id"] for i, _ in ranked]
    assert ids[0] == "near" and ids[-1] == "random"
    assert ranked[0][1] > 0.9 and ranked[-1][1] < 0.05
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    assert [i for i, _ in rank(texts, tests, top=3)] == [i for i, _ in ranked[:3]]
    cut = rank(texts, tests, threshold=0.5)
    assert cut and all(s >= 0.5 for _, s in cut) and len(cut) < len(ranked)


def test_chunked_product_matches_one_block() -> None:
    rng = random.Random(5)
    cands = [record(rng, "")["feature_content"] for _ in range(37)]
    tests = [record(rng, "")["feature_content"] for _ in range(11)]
    whole, owner = max_similarity(cands, tests, chunk=1000)
    chunked, owner_chunked = max_similarity(cands, tests, chunk=4)
    np.testing.assert_allclose(whole, chunked, rtol=1e-6)
    assert (owner == owner_chunked).all()


def test_distribution() -> None:
    texts = ["主诉: 发热1天\n现病史: x", "主诉：发热1天", "性别: 男\n主诉: 咳嗽", "没有主诉行"]
    dist = distribution(texts)
    assert dist["chief_complaints"] == [("发热1天", 2), ("咳嗽", 1)]
    assert dist["records"] == 4 and dist["median_chars"] == 9.5  # lengths 13, 7, 12, 5
    assert chief_complaint("年龄: 3\n主诉:  头痛 \n") == "头痛"


def test_cli_writes_ranked_records_and_leakage_removes_the_copy(tmp_path: Path) -> None:
    cand, test = corpus(tmp_path)
    out = tmp_path / "picked.jsonl"
    proc = engine("select", cand, "--like", test, "--top", "5", "-o", out, "--no-leakage")
    picked = read_lines(out)
    assert [r["id"] for r in picked][0] == "near" and len(picked) == 5
    assert [r["similarity"] for r in picked] == sorted((r["similarity"] for r in picked), reverse=True)
    assert "before: 62 records" in proc.stderr and "after: 5 records" in proc.stderr
    assert "top chief complaints:" in proc.stderr

    proc = engine("select", cand, "--like", test, "--top", "5", "-o", out)
    picked = read_lines(out)
    assert "near" not in [r["id"] for r in picked] and len(picked) == 4
    assert "leakage filter removed 1" in proc.stderr

    proc = engine("select", cand, "--like", test, "-o", out, check=False)
    assert proc.returncode == 2 and "--top N and/or --threshold T" in proc.stderr
