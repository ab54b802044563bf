"""The viewer's parts without a server: the byte-offset record index, the comparers (the diagnosis one
from evals/, the generic fallback) and reading the record a dedupe or leakage reason names."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from engine.errors import SpecError
from evals.compare import DiagnosisComparer
from filters.leakage import LeakageConfig, LeakageFilter
from filters.rouge import RougeDedupe, RougeDedupeConfig
from viewer.compare import GenericComparer, compare_records, distance, set_diff, text_diff
from viewer.records import IndexCache, LineIndex, stage_sources
from viewer.runs import duplicate_ref


def write_lines(path: Path, records: list[dict], blank_after: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [orjson.dumps(r) for r in records]
    if blank_after is not None:
        lines.insert(blank_after, b"")
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.fixture
def stage(tmp_path: Path) -> Path:
    stage = tmp_path / "dx"
    kept = [
        {
            "id": f"k{i}",
            "answer": f"答案 {i}",
            "meta": {"usage": {"prompt_tokens": 10, "completion_tokens": 2}, "latency_s": 0.5},
        }
        for i in range(5)
    ]
    kept[3]["answer"] = '他说"好"\n然后 Fever'
    write_lines(stage / "kept" / "shard-00000.jsonl", kept[:3], blank_after=1)
    write_lines(stage / "kept" / "shard-00001.jsonl", kept[3:])
    rejected = [
        {
            "id": "x1",
            "key": "a",
            "filter": "format",
            "reason": "too many items: diseases has 5",
            "record": kept[0],
        },
        {
            "id": "x2",
            "key": "b",
            "filter": "rouge_dedupe",
            "reason": "near-duplicate: rouge_l 0.9 > 0.7 vs id 'k0'",
            "record": {"id": "x2", "answer": "答案 0"},
        },
    ]
    write_lines(stage / "rejected" / "shard-00000.jsonl", rejected)
    write_lines(
        stage / "failed" / "shard-00000.jsonl", [{"id": "f1", "key": "c", "error": "Fatal", "message": "400"}]
    )
    return stage


def test_index_counts_outcomes_reasons_errors_and_usage(stage: Path) -> None:
    index = LineIndex(stage_sources(stage))
    assert dict(index.counts) == {"kept": 5, "rejected": 2, "failed": 1}
    assert dict(index.reasons) == {"format: too many items": 1, "rouge_dedupe: near-duplicate": 1}
    assert dict(index.errors) == {"Fatal": 1}
    assert index.usage["prompt_tokens"] == 60 and index.usage["answers"] == 6  # kept + the filtered record


def test_index_reads_records_back_by_offset_across_shards_and_blank_lines(stage: Path) -> None:
    index = LineIndex(stage_sources(stage))
    assert [index.rows[p].id for p in index.select()] == ["k0", "k1", "k2", "k3", "k4", "x1", "x2", "f1"]
    assert [r["id"] for r in index.read_many(index.select("kept"))] == ["k0", "k1", "k2", "k3", "k4"]
    assert index.read(index.find("f1")[0])["message"] == "400"
    assert [index.rows[p].id for p in index.select("rejected", "rouge_dedupe: near-duplicate")] == ["x2"]


def test_search_finds_text_as_written_in_json_and_ids_without_case(stage: Path) -> None:
    index = LineIndex(stage_sources(stage))

    def ids(query: str, outcome: str = "") -> list[str]:
        return [index.rows[p].id for p in index.select(outcome, "", query)]

    assert ids("答案 0") == ["k0", "x1", "x2"]  # x1 and x2 hold k0's answer in their record
    assert ids("答案 0", "kept") == ["k0"]
    assert ids('他说"好"\n然后') == ["k3"]  # quotes and newlines are escaped in the file
    assert ids("fever") == ["k3"]  # ASCII letters without case
    assert ids("K4") == ["k4"]  # an id
    assert ids("不存在") == []


def test_a_rewritten_stage_is_reindexed_and_a_stale_read_is_an_error(stage: Path) -> None:
    cache = IndexCache()
    first = cache.stage(stage)
    assert cache.stage(stage) is first
    path = stage / "kept" / "shard-00001.jsonl"
    write_lines(path, [{"id": "new", "answer": "a much longer answer than before, shifting every offset"}])
    os.utime(path, ns=(1, 1))  # even with an old mtime: the size changed
    with pytest.raises(SpecError, match="changed while it was being read"):
        first.read(first.find("k4")[0])
    second = cache.stage(stage)
    assert second is not first and "new" in second.by_id and "k4" not in second.by_id


def test_diagnosis_comparer_matches_like_the_evaluation() -> None:
    comparer = DiagnosisComparer()
    a = {"id": 1, "diseases": "1. 高血压（1级）；2. 糖尿病", "reason": ["1. 血压160/100mmHg；", "口渴多饮"]}
    b = {"id": 1, "diseases": ["高血压", "冠心病"], "reason": ["血压 160/100mmHg", "心电图ST段压低"]}
    diffs = compare_records(comparer, a, b)
    assert [p["status"] for p in diffs["diseases"]["a"]] == ["same", "removed"]  # qualifiers dropped
    assert [p["status"] for p in diffs["diseases"]["b"]] == ["same", "added"]
    assert diffs["diseases"]["counts"] == {"same": 1, "matched": 0, "removed": 1, "added": 1}
    assert [p["status"] for p in diffs["reason"]["a"]] == ["same", "removed"]  # spacing is normalised away
    assert diffs["reason"]["a"][0]["text"] == "血压160/100mmHg"  # numbering and terminator stripped
    assert distance(diffs) == 0.5
    close = compare_records(comparer, {"reason": ["发热，体温最高39.2℃"]}, {"reason": ["发热39.2℃"]})[
        "reason"
    ]
    assert close["a"][0]["status"] == "matched" and close["a"][0]["note"].endswith("↔ 1")
    assert 0 < close["distance"] < 1


def test_generic_comparer_diffs_lists_as_sets_and_text_by_characters_and_words() -> None:
    diff = set_diff(["a", "b", "b"], ["b", "c"])
    assert [p["status"] for p in diff["a"]] == ["removed", "same", "removed"]  # a repeated item pairs once
    assert [p["status"] for p in diff["b"]] == ["same", "added"]
    chinese = text_diff("患者发热3天", "患者咳嗽3天")
    assert [(p["text"], p["status"]) for p in chinese["a"]] == [
        ("患者", "same"),
        ("发热", "removed"),
        ("3天", "same"),
    ]
    english = text_diff("fever for three days", "cough for three days")
    assert [p["text"] for p in english["b"] if p["status"] == "added"] == ["cough"]  # whole words
    diffs = compare_records(GenericComparer(), {"id": 1, "q": "same", "n": 1}, {"id": 1, "q": "same", "n": 2})
    assert list(diffs) == ["n"] and diffs["n"]["kind"] == "text"  # equal fields are left to the caller


def test_duplicate_reasons_of_the_real_filters_name_the_record_they_copy(tmp_path: Path) -> None:
    dedupe = RougeDedupe(RougeDedupeConfig(fields=["text"], threshold=0.5))
    assert dedupe({"id": "a 1", "text": "患者反复咳嗽咳痰二十年加重一周"}) is True
    verdict = dedupe({"id": "b", "text": "患者反复咳嗽咳痰二十年加重两周"})
    assert verdict is not True and duplicate_ref(verdict[1]) == ("id", "a 1")
    seed = tmp_path / "seed.jsonl"
    write_lines(seed, [{"id": 7, "text": "腹痛腹泻三天伴发热恶心呕吐"}])
    seeded = RougeDedupe(RougeDedupeConfig(fields=["text"], threshold=0.5, seed=str(seed)))
    verdict = seeded({"id": "c", "text": "腹痛腹泻三天伴发热恶心"})
    assert duplicate_ref(verdict[1]) == ("seed id", 7)
    test = tmp_path / "test.jsonl"
    write_lines(test, [{"id": "t'1", "text": "女，35岁，停经45天，阴道少量流血2天，下腹隐痛"}])
    leakage = LeakageFilter(LeakageConfig(test=[str(test)], fields=["text"], core=False))
    verdict = leakage({"id": "d", "text": "女，35岁，停经45天，阴道少量流血2天，下腹隐痛"})
    assert verdict is not True and duplicate_ref(verdict[1]) == ("test id", "t'1")
    assert duplicate_ref("too many items: diseases has 5") is None
