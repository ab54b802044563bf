"""The engine end to end over real HTTP: run, resume after SIGKILL, shards, bad specs, preflight, budget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.engine_helpers import ROOT, engine, outcomes, read_lines, write_spec

CHAINED = """
[[stages]]
name = "first"
generator = "template"
provider = "teacher"
input = "cases.jsonl"
prompt = "Q: {question}"

[[stages]]
name = "second"
generator = "template"
provider = "teacher"
input = "first"
prompt = "Check: {answer}"
output = "check"
"""


def test_run_end_to_end_keeps_every_record_with_provenance(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=12)
    engine("run", spec, "--quiet")
    kept = outcomes(tmp_path / "out", "answer", "kept")
    assert sorted(r["id"] for r in kept) == [f"c{i:04d}" for i in range(12)]
    assert kept[0]["answer"] == "Answer briefly: question number 0"  # the server echoes the prompt
    assert kept[0]["meta"]["model"] == "test-model" and kept[0]["meta"]["usage"]["completion_tokens"] > 0
    assert [r["id"] for r in kept] == sorted(r["id"] for r in kept)  # commit order is input order
    manifest = orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())
    assert manifest["status"] == "complete"
    assert manifest["stages"]["answer"]["counts"] == {"kept": 12, "rejected": 0, "failed": 0, "pending": 0}
    assert fake_server.requests == 13  # and one preflight
    assert manifest["providers"]["teacher"]["requests"] == 13  # what the server saw, preflight included
    status = orjson.loads(engine("status", spec, "--json").stdout)
    assert status["providers"]["teacher"]["requests"] == 13  # counted once, not once per manifest read
    secret = "sk-test-secret-123"
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace")


def test_rerun_requests_nothing_already_done(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=10)
    engine("run", spec, "--quiet")
    first = fake_server.requests
    engine("run", spec, "--quiet")
    assert fake_server.requests == first  # no preflight either: nothing was pending
    assert len(outcomes(tmp_path / "out", "answer", "kept")) == 10


def test_changed_prompt_is_new_work(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=5)
    engine("run", spec, "--quiet")
    spec.write_text(spec.read_text().replace("Answer briefly", "Answer in one word"))
    engine("run", spec, "--quiet")
    kept = outcomes(tmp_path / "out", "answer", "kept")
    assert len(kept) == 5 and all(r["answer"].startswith("Answer in one word") for r in kept)


def test_resume_after_sigkill_gives_exactly_one_outcome_per_id(tmp_path: Path, fake_server) -> None:
    n = 60
    fake_server.set(latency_s=0.05)
    spec = write_spec(tmp_path, fake_server.url, cases=n, concurrency=4)
    journal = tmp_path / "out" / "answer" / "raw" / "shard-00000.jsonl"
    env = {**os.environ, "TEST_ENGINE_KEY": "k"}
    for stop_at in (5, 25, 45):
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "run", str(spec), "--quiet"], cwd=ROOT, env=env
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(read_lines_safe(journal)) < stop_at:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with open(journal, "ab") as f:
            f.write(b'{"key": "torn')  # what a kill in the middle of a write leaves
    engine("run", spec, "--quiet")
    keys = [e["key"] for e in read_lines(journal)]
    assert len(keys) == len(set(keys)) == n  # the torn line was dropped, nothing journaled twice
    kept = outcomes(tmp_path / "out", "answer", "kept")
    assert Counter(r["id"] for r in kept) == Counter({f"c{i:04d}": 1 for i in range(n)})
    answered = Counter(b["messages"][-1]["content"] for b in fake_server.bodies if "question" in str(b))
    # a request is repeated only when it was in flight at a kill: at most the concurrency window each time
    assert sum(answered.values()) - n <= 3 * 4


def read_lines_safe(path: Path) -> list[bytes]:
    if not path.exists():
        return []
    return [line for line in path.read_bytes().split(b"\n")[:-1]]


def test_shards_are_disjoint_and_complete_across_chained_stages(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=40, stages=CHAINED)
    for i in (1, 2, 3):
        engine("run", spec, "--shard", f"{i}/3", "--quiet")
    for stage in ("first", "second"):
        per_shard = [read_lines(tmp_path / "out" / stage / "kept" / f"shard-{i:05d}.jsonl") for i in range(3)]
        ids = [r["id"] for rows in per_shard for r in rows]
        assert all(rows for rows in per_shard)
        assert sorted(ids) == [f"c{i:04d}" for i in range(40)]  # complete, and no id twice
    answered = [b for b in fake_server.bodies if "Check:" in str(b)]
    assert len(answered) == 40  # the second stage asked once per record, over all shards together
    status = orjson.loads(engine("status", spec, "--json").stdout)
    assert status["stages"]["second"]["counts"] == {"kept": 40, "rejected": 0, "failed": 0, "pending": 0}


def test_status_reports_pending_before_any_run(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=7)
    status = orjson.loads(engine("status", spec, "--json").stdout)
    assert status["stages"]["answer"]["counts"]["pending"] == 7
    assert fake_server.requests == 0


def test_chained_stage_reads_the_previous_stage(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=6, stages=CHAINED)
    engine("run", spec, "--quiet")
    second = outcomes(tmp_path / "out", "second", "kept")
    assert len(second) == 6 and second[0]["check"] == "Check: Q: question number 0"
    assert second[0]["question"] == "question number 0"  # input fields flow through


def test_export_jsonl(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=3)
    engine("run", spec, "--quiet")
    out = tmp_path / "answers.jsonl"
    engine("export", spec, "--stage", "answer", "-o", out)
    assert [r["id"] for r in read_lines(out)] == ["c0000", "c0001", "c0002"]


def test_budget_stops_the_run_cleanly(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=50, run="max_tokens = 200", concurrency=1)
    proc = engine("run", spec, "--quiet", check=False)
    assert proc.returncode == 1 and "budget reached" in proc.stderr
    manifest = orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())
    counts = manifest["stages"]["answer"]["counts"]
    assert counts["kept"] < 50 and counts["kept"] + counts["pending"] == 50
    engine("run", spec, "--quiet", check=False)  # resuming keeps what was done
    assert len(outcomes(tmp_path / "out", "answer", "kept")) >= counts["kept"]


def test_sigterm_lets_requests_in_flight_finish_and_exits_143(tmp_path: Path, fake_server) -> None:
    fake_server.set(latency_s=0.3)
    spec = write_spec(tmp_path, fake_server.url, cases=100, concurrency=4)
    journal = tmp_path / "out" / "answer" / "raw" / "shard-00000.jsonl"
    env = {**os.environ, "TEST_ENGINE_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(spec), "--quiet"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(read_lines_safe(journal)) < 4:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143  # 128 + SIGTERM: `engine run S && engine export S` stops here
    chat = [b for b in fake_server.bodies if "question" in str(b)]
    entries = read_lines(journal)
    # within the grace period every request sent was answered and journaled: none lost, none sent after
    assert len(entries) == len(chat) < 100
    manifest = orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())
    assert manifest["status"] == "stopped by SIGTERM"
    assert manifest["stages"]["answer"]["counts"]["pending"] == 100 - len(entries)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ({"api_key": "the-right-key"}, "401"),
        ({"models": ["another-model"]}, "404"),
    ],
)
def test_preflight_stops_a_bad_provider_in_seconds(tmp_path: Path, fake_server, setup, expected) -> None:
    fake_server.set(**setup)
    spec = write_spec(tmp_path, fake_server.url, cases=30)
    started = time.monotonic()
    proc = engine("run", spec, "--quiet", check=False)
    assert proc.returncode == 1 and "preflight" in proc.stderr and expected in proc.stderr
    assert time.monotonic() - started < 15
    assert fake_server.requests == 1  # the preflight only: no record was tried
    assert "sk-test-secret-123" not in proc.stderr


def test_preflight_unreachable_endpoint(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", cases=5)
    started = time.monotonic()
    proc = engine("run", spec, "--quiet", check=False)
    assert proc.returncode == 1 and "preflight" in proc.stderr
    assert time.monotonic() - started < 30


def test_unparseable_answers_are_resampled_then_rejected_with_raw_text(tmp_path: Path, fake_server) -> None:
    stages = """
[[stages]]
name = "answer"
generator = "template"
provider = "teacher"
input = "cases.jsonl"
prompt = "Reply in JSON: {question}"
parse = "json"
max_bad_output = 2
"""
    spec = write_spec(tmp_path, fake_server.url, cases=3, stages=stages)
    fake_server.script("question number 0", '{"ok": true}')
    fake_server.script("question number 1", ["not json", '{"ok": 1}'])
    fake_server.script("question number 2", "never json")
    engine("run", spec, "--quiet")
    kept = outcomes(tmp_path / "out", "answer", "kept")
    rejected = outcomes(tmp_path / "out", "answer", "rejected")
    assert [r["id"] for r in kept] == ["c0000", "c0001"] and kept[1]["meta"]["attempts"] == 2
    assert len(rejected) == 1 and rejected[0]["filter"] == "parse" and rejected[0]["raw_text"] == "never json"
    status = orjson.loads(engine("status", spec, "--json").stdout)
    assert status["stages"]["answer"]["reasons"] == {"parse: answer is not valid JSON": 1}


def test_failed_records_are_recorded_then_retried_on_request(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=4)
    fake_server.set(fail_when={"question number 2": 400})  # e.g. a context-length error: never retried
    assert engine("run", spec, "--quiet", check=False).returncode == 3  # every item ended, one failed
    failed = outcomes(tmp_path / "out", "answer", "failed")
    assert [(r["id"], r["error"], r["status_code"]) for r in failed] == [("c0002", "Fatal", 400)]
    assert sum("question number 2" in str(b) for b in fake_server.bodies) == 1
    assert engine("run", spec, "--quiet", check=False).returncode == 3  # a plain re-run leaves it alone
    assert sum("question number 2" in str(b) for b in fake_server.bodies) == 1
    fake_server.set(fail_when={})
    engine("run", spec, "--quiet", "--retry-failed")
    assert sorted(r["id"] for r in outcomes(tmp_path / "out", "answer", "kept")) == [
        "c0000",
        "c0001",
        "c0002",
        "c0003",
    ]
    assert outcomes(tmp_path / "out", "answer", "failed") == []
