"""status, filter (replay) and export across mixes of sharded and plain runs: every work key at most once
in kept/rejected/failed, export = exactly the kept keys, nothing hidden and nothing deleted."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from engine.derived import DerivedWriter, stale
from tests.engine_helpers import (
    assert_exactly_once,
    engine_here,
    outcomes,
    read_lines,
    write_cases,
    write_spec,
)
from tests.test_pipeline import CHAINED

N = 30


def status(spec: Path) -> dict:
    return orjson.loads(engine_here("status", spec, "--json").stdout)


def exported(spec: Path, stage: str, tmp_path: Path) -> list[str]:
    path = tmp_path / f"export-{stage}.jsonl"
    engine_here("export", spec, "--stage", stage, "-o", path)
    return [r["id"] for r in read_lines(path)]


def test_one_shard_then_status_counts_what_it_did(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=N)
    engine_here("run", spec, "--shard", "1/3", "--quiet")
    done = len(read_lines(tmp_path / "out" / "answer" / "raw" / "shard-00000.jsonl"))
    assert 0 < done < N
    counts = status(spec)["stages"]["answer"]["counts"]
    assert counts == {"kept": done, "rejected": 0, "failed": 0, "pending": N - done}


def test_replay_after_a_partial_sharded_run_keeps_every_shard(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=N, stages=CHAINED)
    engine_here("run", spec, "--shard", "1/3", "--quiet")
    engine_here("run", spec, "--shard", "2/3", "--quiet")
    before = {
        stage: sorted(r["id"] for r in outcomes(tmp_path / "out", stage, "kept"))
        for stage in ("first", "second")
    }
    requests = fake_server.requests
    engine_here("filter", spec)
    assert fake_server.requests == requests  # a replay asks nothing
    for stage in ("first", "second"):
        assert (tmp_path / "out" / stage / "kept" / "shard-00001.jsonl").exists()  # not merged away
        assert sorted(exported(spec, stage, tmp_path)) == before[stage] != []
        assert_exactly_once(tmp_path / "out", stage)
    engine_here("run", spec, "--shard", "3/3", "--quiet")
    for stage in ("first", "second"):
        assert sorted(exported(spec, stage, tmp_path)) == [f"c{i:04d}" for i in range(N)]
    assert status(spec)["stages"]["second"]["counts"] == {"kept": N, "rejected": 0, "failed": 0, "pending": 0}


def test_plain_run_after_a_sharded_run_exports_each_id_once(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=N, stages=CHAINED)
    engine_here("run", spec, "--shard", "1/3", "--quiet")
    engine_here("run", spec, "--shard", "3/3", "--quiet")
    engine_here("run", spec, "--quiet")
    for stage in ("first", "second"):
        assert sorted(exported(spec, stage, tmp_path)) == [f"c{i:04d}" for i in range(N)]
        assert_exactly_once(tmp_path / "out", stage)
    asked = [b["messages"][-1]["content"] for b in fake_server.bodies if b.get("max_tokens") != 1]
    assert len(asked) == len(set(asked)) == 2 * N  # no key was asked twice
    counts = status(spec)["stages"]
    assert counts["first"]["counts"]["kept"] == counts["second"]["counts"]["kept"] == N


def test_filter_then_resuming_one_shard_keeps_each_id_once(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=N, stages=CHAINED)
    engine_here("run", spec, "--shard", "1/2", "--quiet")
    engine_here("filter", spec)
    engine_here("run", spec, "--shard", "1/2", "--quiet")
    engine_here("run", spec, "--shard", "2/2", "--quiet")
    engine_here("run", spec, "--shard", "1/2", "--quiet")
    for stage in ("first", "second"):
        assert sorted(exported(spec, stage, tmp_path)) == [f"c{i:04d}" for i in range(N)]
        assert_exactly_once(tmp_path / "out", stage)


def test_two_stage_sharded_run_then_status_counts_each_input_once(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=N, stages=CHAINED)
    engine_here("run", spec, "--shard", "2/3", "--quiet")
    engine_here("run", spec, "--quiet")  # a plain run finishes what the shards left
    engine_here("run", spec, "--shard", "1/3", "--quiet")  # and a shard run afterwards changes nothing
    stages = status(spec)["stages"]
    assert stages["first"]["counts"] == {"kept": N, "rejected": 0, "failed": 0, "pending": 0}
    assert stages["second"]["counts"] == {"kept": N, "rejected": 0, "failed": 0, "pending": 0}


def test_a_retried_failure_stays_in_the_journal_of_its_failure(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=N)
    fake_server.set(fail_when={"question number 7": 400, "question number 8": 400})
    runs = [engine_here("run", spec, "--shard", s, "--quiet", check=False) for s in ("2/2", "1/2")]
    assert sorted(p.returncode for p in runs) == [0, 3]  # the shard whose items failed says so
    failed = {r["id"] for r in outcomes(tmp_path / "out", "answer", "failed")}
    assert failed == {"c0007", "c0008"}
    fake_server.set(fail_when={})
    engine_here("run", spec, "--quiet", "--retry-failed")  # a plain run holds every shard: retries them all
    assert outcomes(tmp_path / "out", "answer", "failed") == []
    engine_here("run", spec, "--shard", "2/2", "--quiet")  # each shard still agrees on where each key lives
    engine_here("run", spec, "--shard", "1/2", "--quiet")
    assert_exactly_once(tmp_path / "out", "answer")
    assert sorted(exported(spec, "answer", tmp_path)) == [f"c{i:04d}" for i in range(N)]


def test_journals_from_before_locks_with_a_key_twice_export_it_once(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=N)
    engine_here("run", spec, "--quiet")
    raw = tmp_path / "out" / "answer" / "raw"
    (raw / "shard-00003.jsonl").write_bytes((raw / "shard-00000.jsonl").read_bytes())  # two processes did all
    proc = engine_here("export", spec, "--stage", "answer", check=False)
    assert proc.returncode == 2 and "engine filter" in proc.stderr  # its answers are not filtered yet
    engine_here("filter", spec)
    assert sorted(exported(spec, "answer", tmp_path)) == [f"c{i:04d}" for i in range(N)]
    assert_exactly_once(tmp_path / "out", "answer")


def test_export_after_a_killed_run_says_what_to_run(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=N)
    engine_here("run", spec, "--quiet", "--shard", "1/2")
    raw = tmp_path / "out" / "answer" / "raw" / "shard-00000.jsonl"
    extra = read_lines(tmp_path / "out" / "answer" / "raw" / "shard-00000.jsonl")[:1]
    engine_here("run", spec, "--quiet", "--shard", "2/2")
    with open(
        raw, "ab"
    ) as f:  # what a SIGKILL between the journal and the commit leaves: an unfiltered answer
        f.write(orjson.dumps({**extra[0], "key": "0" * 24, "id": "x"}) + b"\n")
    proc = engine_here("export", spec, "--stage", "answer", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "shard 1" in proc.stderr and "engine filter" in proc.stderr
    engine_here("run", spec, "--quiet", "--shard", "1/2")  # resuming the shard brings its files up to date
    assert sorted(exported(spec, "answer", tmp_path)) == [f"c{i:04d}" for i in range(N)]


BEFORE = {0: {"kept": ["a", "b"], "rejected": ["c"]}, 1: {"kept": ["d"], "failed": ["e"]}}
AFTER = {0: {"kept": ["c"], "rejected": ["a"]}, 1: {"kept": ["d", "e"], "rejected": ["b"]}}
RENAMES = 13  # 2 states "in flux", 3 files losing records, 6 new files, 2 states "done"


@pytest.mark.parametrize("crash_after", range(RENAMES + 1))
def test_a_commit_killed_at_any_rename_never_shows_a_key_twice(
    tmp_path: Path, monkeypatch, crash_after
) -> None:
    """A replay moving keys between outcomes and shards, killed before any of its renames: every key is
    at most once in the files, the state says they are stale, and the next commit completes them."""
    stage = tmp_path / "stage"
    (stage / "raw").mkdir(parents=True)
    for shard in (0, 1):
        (stage / "raw" / f"shard-{shard:05d}.jsonl").write_bytes(b"{}\n")
    commit(stage, BEFORE)
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):  # the process dies here: this rename and every later step never happen
        if len(calls) == crash_after:
            raise KeyboardInterrupt
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    try:
        commit(stage, AFTER)
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    assert len(calls) == min(crash_after, RENAMES)
    keys_in(stage)  # raises on a key in two files
    assert bool(stale(stage)) == (0 < crash_after < RENAMES)  # half done reads as stale
    commit(stage, AFTER)
    assert keys_in(stage) == {
        k: (s, o) for s, outs in AFTER.items() for o, keys in outs.items() for k in keys
    }
    assert not stale(stage) and not list(stage.rglob("*.tmp*"))


def commit(stage: Path, layout: dict[int, dict[str, list[str]]]) -> None:
    writer = DerivedWriter(stage, layout)
    for shard, outs in layout.items():
        for outcome, keys in outs.items():
            for key in keys:
                record = {"id": key, "meta": {"key": key}} if outcome == "kept" else {"id": key, "key": key}
                writer.write(shard, outcome, key, record)
    writer.commit({0: 3, 1: 3})  # each journal: one 3-byte line


def keys_in(stage: Path) -> dict[str, tuple[int, str]]:
    seen: dict[str, tuple[int, str]] = {}
    for outcome in ("kept", "rejected", "failed"):
        for path in sorted((stage / outcome).glob("shard-*.jsonl")):
            for row in read_lines(path):
                key = row["meta"]["key"] if outcome == "kept" else row["key"]
                assert key not in seen, f"{key} in {seen[key]} and {path}"
                seen[key] = (int(path.stem[-5:]), outcome)
    return seen


def test_export_of_a_stage_never_run_says_so(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=3)
    write_cases(tmp_path / "cases.jsonl", 3)
    proc = engine_here("export", spec, "--stage", "answer", check=False)
    assert proc.returncode == 2 and "no kept records yet" in proc.stderr
