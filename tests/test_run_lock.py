"""One writer per run shard: a second run of the same shard, a filter during a run, or a run with another
--shard N is refused at once naming the holder; a killed holder never blocks; shards of one N share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.engine_helpers import ROOT, assert_exactly_once, engine_here, outcomes, read_lines, write_spec

N = 24


def start(spec: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "TEST_ENGINE_KEY": "k"}
    cmd = [sys.executable, "-m", "engine", "run", str(spec), "--quiet", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lines(journal: Path, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, f"the run ended first: {proc.communicate()}"
        time.sleep(0.02)
    raise AssertionError("the run wrote nothing in 120 s")


def wait_for_requests(server, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while server.in_flight < n:
        assert proc.poll() is None, f"the run ended first: {proc.communicate()}"
        assert time.monotonic() < deadline, "no request in 120 s"
        time.sleep(0.02)


def refused(proc: subprocess.CompletedProcess, pid: int) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"pid {pid} on " in lines[0] and "python -m engine run" in lines[0] and "since" in lines[0]


def test_a_second_run_and_a_filter_are_refused_while_a_run_holds_it(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=N, concurrency=2)
    journal = tmp_path / "out" / "answer" / "raw" / "shard-00000.jsonl"
    fake_server.set(hold="question")  # the run holds its lock, waiting for answers
    first = start(spec)
    wait_for_requests(fake_server, 1, first)
    started = time.monotonic()
    refused(engine_here("run", spec, "--quiet", check=False), first.pid)
    refused(engine_here("filter", spec, check=False), first.pid)
    refused(engine_here("run", spec, "--quiet", "--shard", "1/2", check=False), first.pid)
    assert time.monotonic() - started < 60  # at once: nothing waited for the run
    fake_server.set(hold=None)
    assert first.wait(timeout=120) == 0, first.communicate()
    keys = [e["key"] for e in read_lines(journal)]
    assert len(keys) == len(set(keys)) == N  # nothing asked twice, nothing billed twice
    assert fake_server.requests == N + 1  # and one preflight
    assert_exactly_once(tmp_path / "out", "answer")
    engine_here("filter", spec)  # free again once the run ended


def test_a_killed_run_leaves_no_lock_behind(tmp_path: Path, fake_server) -> None:
    fake_server.set(latency_s=0.05)
    spec = write_spec(tmp_path, fake_server.url, cases=N, concurrency=2)
    journal = tmp_path / "out" / "answer" / "raw" / "shard-00000.jsonl"
    proc = start(spec)
    wait_for_lines(journal, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    engine_here("run", spec, "--quiet")
    assert sorted(r["id"] for r in outcomes(tmp_path / "out", "answer", "kept")) == [
        f"c{i:04d}" for i in range(N)
    ]


def test_shards_of_one_split_run_side_by_side_and_other_splits_wait(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=N, concurrency=2)
    fake_server.set(hold="question")
    one = start(spec, "--shard", "1/2")
    wait_for_requests(fake_server, 1, one)
    two = start(spec, "--shard", "2/2")  # same N, other shard: disjoint keys, side by side
    wait_for_requests(fake_server, 2, two)  # both are past their locks, waiting for answers
    refused(engine_here("run", spec, "--quiet", "--shard", "1/3", check=False), one.pid)  # another N overlaps
    refused(engine_here("run", spec, "--quiet", check=False), one.pid)  # a plain run does every key
    fake_server.set(hold=None)
    assert one.wait(timeout=120) == 0 and two.wait(timeout=120) == 0
    assert sorted(r["id"] for r in outcomes(tmp_path / "out", "answer", "kept")) == [
        f"c{i:04d}" for i in range(N)
    ]
    assert_exactly_once(tmp_path / "out", "answer")


def test_status_and_export_during_a_run_need_no_lock(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=N, concurrency=2)
    engine_here("run", spec, "--quiet", "--shard", "1/2")
    journal = tmp_path / "out" / "answer" / "raw" / "shard-00001.jsonl"
    fake_server.set(latency_s=0.2)
    proc = start(spec, "--shard", "2/2")
    wait_for_lines(journal, 2, proc)
    fake_server.set(hold="question")  # the other answers wait: the run is in progress
    status = engine_here("status", spec).stdout  # no lock needed, and it says who is writing what
    assert f"answered items are not in kept/rejected/failed yet: pid {proc.pid}" in status
    export = engine_here("export", spec, "--stage", "answer", "-o", tmp_path / "now.jsonl")
    assert f"pid {proc.pid}" in export.stderr  # says that shard 2 is still being written
    ids = [r["id"] for r in read_lines(tmp_path / "now.jsonl")]
    assert len(ids) == len(set(ids)) and set(ids) <= {f"c{i:04d}" for i in range(N)}
    fake_server.set(hold=None)
    assert proc.wait(timeout=120) == 0
