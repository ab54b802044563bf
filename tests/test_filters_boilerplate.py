"""Boilerplate: frequent segments are learnt from a corpus and stripped, leaving each record's core."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest

from filters.boilerplate import Boilerplate, split_segments
from filters.rouge import RougeIndex

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "healthai2025"


def cases() -> list[str]:
    return [
        json.loads(line)["feature_content"]
        for line in (DATA / "filters_cases.jsonl").read_text().splitlines()
    ]


def test_segments_split_on_chinese_and_ascii_separators():
    assert split_segments("主诉: 咳嗽，咳痰；发热、乏力。\n既往史: 无;过敏史:  ") == [
        "主诉: 咳嗽", "咳痰", "发热", "乏力", "既往史: 无", "过敏史:",
    ]  # fmt: skip


def test_learnt_boilerplate_is_the_template_not_the_patient():
    texts = cases()
    boilerplate = Boilerplate.learn(texts)
    assert "否认近14天内与新冠病毒感染者有接触史" in boilerplate and "P：次/分" in boilerplate
    core = boilerplate.core(texts[0])
    assert "右下肺可闻及少许湿啰音" in core and "新冠" not in core and "次/分" not in core
    # a segment in one record only is never boilerplate, whatever the corpus size
    assert not any(
        seg in boilerplate for seg in split_segments(texts[0]) if sum(seg in t for t in texts) == 1
    )


def test_share_and_min_docs_bound_what_counts_as_frequent():
    texts = ["甲，乙", "甲，丙", "甲，丁，乙", "戊，己"]
    assert Boilerplate.learn(texts).segments == {"甲"}  # 乙 is in two documents only: a pair, not a template
    assert Boilerplate.learn(texts, min_docs=2).segments == {"甲", "乙"}
    assert Boilerplate.learn(texts, share=0.8).segments == set()  # 3 of 4 is not more than 80%


def test_save_load_and_union(tmp_path: Path):
    learnt = Boilerplate.learn(cases())
    learnt.save(tmp_path / "segments.txt")
    loaded = Boilerplate.load(tmp_path / "segments.txt")
    assert loaded.segments == learnt.segments
    assert (loaded | Boilerplate(["额外模板"])).segments == learnt.segments | {"额外模板"}
    assert Boilerplate().core("原文，不变") == "原文，不变"


def test_real_records_false_near_duplicates_mostly_vanish_on_cores():
    files = sorted(SHARED.glob("*camp_data_step_1_without_answer.jsonl"))
    if not files:
        pytest.skip(f"real data absent: {SHARED} (see /work/shared/data/README.md)")
    texts = [orjson.loads(line)["feature_content"] for line in files[0].open("rb")]
    distinct = list(dict.fromkeys(texts))
    random.Random(1).shuffle(distinct)
    queries, others = distinct[:300], distinct[300:500]
    boilerplate = Boilerplate.learn(texts)

    def above(transform) -> int:
        index = RougeIndex()
        for i, text in enumerate(others):
            index.add(i, transform(text))
        return sum(index.exceeds(transform(q), 0.7) for q in queries)

    whole, core = above(lambda t: t), above(boilerplate.core)
    assert whole > 60 and core * 5 < whole  # measured: 103 -> 8 of 300
    # a lightly edited copy is still a near-duplicate on the core
    edited = [q.replace("，", "，患者", 1) for q in queries[:50]]
    index = RougeIndex()
    for i, q in enumerate(queries[:50]):
        index.add(i, boilerplate.core(q))
    assert sum(index.exceeds(boilerplate.core(e), 0.7) for e in edited) >= 45
