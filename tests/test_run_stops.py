"""How `engine run` stops, over real HTTP in real subprocesses: SIGINT/SIGTERM with a grace period, a
second signal, Ctrl-C at any moment, exit codes, and the local provider's worker thread."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from engine.signals import SignalStop
from tests.engine_helpers import ROOT, engine, outcomes, write_spec


def start(spec: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "TEST_ENGINE_KEY": "k"}
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "run", str(spec), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended early:\n{proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def journal(tmp_path: Path) -> list[dict]:
    path = tmp_path / "out" / "answer" / "raw" / "shard-00000.jsonl"
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines(keepends=True)
    return [orjson.loads(line) for line in lines if line.endswith(b"\n")]  # a torn tail is no outcome


def assert_resumes_to_one_outcome_each(tmp_path: Path, spec: Path, n: int) -> None:
    engine("run", spec, "--quiet")
    kept = outcomes(tmp_path / "out", "answer", "kept")
    assert Counter(r["id"] for r in kept) == Counter({f"c{i:04d}": 1 for i in range(n)})
    keys = [e["key"] for e in journal(tmp_path)]
    assert len(keys) == len(set(keys)) == n


def test_sigint_cancels_requests_on_a_hanging_endpoint_after_grace_s(tmp_path: Path, fake_server) -> None:
    spec = write_spec(
        tmp_path, fake_server.url, cases=30, concurrency=4, run="grace_s = 1", provider="timeout_s = 60"
    )
    fake_server.set(latency_s=0.05)
    proc = start(spec, "--quiet")
    wait_for(lambda: len(journal(tmp_path)) >= 3, proc)
    fake_server.set(latency_s=120)  # from now on the endpoint hangs
    wait_for(lambda: fake_server.in_flight >= 4, proc)
    sent = fake_server.requests
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - started < 1 + 5  # grace_s, then requests in flight are cancelled (not 120 s)
    assert fake_server.requests == sent  # nothing was sent after the signal
    assert "Traceback" not in err and "stopped by SIGINT: waiting up to 1 s" in err
    assert err.rstrip().splitlines()[-1].startswith("stopped by SIGINT: ")
    done = journal(tmp_path)
    assert all(e["status"] == "ok" for e in done)  # the cancelled requests left no outcome: still pending
    manifest = orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())
    assert manifest["status"] == "stopped by SIGINT"
    assert manifest["stages"]["answer"]["counts"]["pending"] == 30 - len(done)
    fake_server.set(latency_s=0)
    assert_resumes_to_one_outcome_each(tmp_path, spec, 30)


def test_a_second_signal_exits_at_once(tmp_path: Path, fake_server) -> None:
    spec = write_spec(
        tmp_path, fake_server.url, cases=30, concurrency=4, run="grace_s = 60", provider="timeout_s = 60"
    )
    proc = start(spec, "--quiet")
    wait_for(lambda: len(journal(tmp_path)) >= 3, proc)
    fake_server.set(latency_s=120)
    wait_for(lambda: fake_server.in_flight >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - started < 3, err  # not grace_s = 60
    assert "SIGINT again: exiting now" in err and "Traceback" not in err
    fake_server.set(latency_s=0)
    assert_resumes_to_one_outcome_each(tmp_path, spec, 30)


def test_one_signal_delivered_twice_is_one_stop() -> None:
    # GNU `timeout` sends its signal to the process, then to its process group: microseconds apart
    async def main() -> list[int]:
        seen: list[int] = []
        with SignalStop(asyncio.get_running_loop(), seen.append):
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.05)
        return seen

    assert asyncio.run(main()) == [signal.SIGTERM]  # a second one would have exited this process


def test_ctrl_c_at_any_moment_is_one_line_and_130(tmp_path: Path, fake_server) -> None:
    fake_server.set(latency_s=0.2)
    spec = write_spec(tmp_path, fake_server.url, cases=20, run="grace_s = 1", provider="timeout_s = 10")
    moments = {
        "starting up": lambda: time.sleep(1.0) or True,
        "in the preflight": lambda: fake_server.requests >= 1,  # it hangs (below)
        "with requests in flight": lambda: len(journal(tmp_path)) >= 2,
    }
    for moment, reached in moments.items():
        fake_server.reset_counts()
        if moment == "in the preflight":
            fake_server.hang_next(1)
        proc = start(spec, "--quiet")
        wait_for(reached, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and "Traceback" not in err, (moment, err)
        assert len(err.strip().splitlines()) <= 3, (moment, err)
    keys = [e["key"] for e in journal(tmp_path)]
    assert len(keys) == len(set(keys))


def test_exit_codes_say_whether_every_item_ended_and_how(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=5)
    fake_server.set(fail_when={"question": 400})  # every item fails (not retried)
    proc = engine("run", spec, check=False)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith("run t: finished, 5 failed") and "complete" not in proc.stdout
    assert "5 of 5 items failed" in proc.stderr and "--retry-failed" in proc.stderr
    fake_server.set(fail_when={})
    assert engine("run", spec, "--quiet", "--retry-failed", check=False).returncode == 0
    assert len(outcomes(tmp_path / "out", "answer", "kept")) == 5


def test_a_stuck_local_worker_does_not_hold_up_exit(tmp_path: Path) -> None:
    # A real BatchWorker whose handler never returns (a model load, a long generate): the caller is
    # cancelled, close() gives up after wait_s, and the process exits at once.
    script = """
import asyncio, threading, time
from engine.providers.local_worker import BatchWorker
stuck = threading.Event()
worker = BatchWorker(lambda jobs: stuck.wait(), batched_kind="generate", batch_size=1, wait_s=0, name="w")
async def main():
    task = asyncio.create_task(worker.submit("generate"))
    await asyncio.sleep(0.2)
    task.cancel()
    started = time.monotonic()
    await worker.close(wait_s=0.5)
    print(f"closed in {time.monotonic() - started:.1f}")
asyncio.run(main())
"""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in ("closed in 0.5", "closed in 0.6")
    assert time.monotonic() - started < 10
