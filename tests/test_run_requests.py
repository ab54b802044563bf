"""`engine run` against misbehaving endpoints and inputs, in real subprocesses over real HTTP: the request
deadline, the response size cap, every provider checked first, bad input records, misuse without
tracebacks, and progress that tells the truth when stderr is a file."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from engine.cli import main
from engine.errors import SpecError
from engine.pipeline import Pipeline
from engine.spec import load_spec
from tests.engine_helpers import ROOT, engine, outcomes, write_spec
from tests.test_pipeline import CHAINED

TWO_PROVIDERS = """
[providers.checker]
kind = "openai"
base_url = "{url}"
model = "{model}"
api_key_env = "{key_env}"

[[stages]]
name = "answer"
generator = "template"
provider = "teacher"
input = "cases.jsonl"
prompt = "Q: {{question}}"

[[stages]]
name = "check"
generator = "template"
provider = "checker"
input = "answer"
prompt = "Check: {{answer}}"
"""


def chat_requests(server) -> int:
    return sum(1 for b in server.bodies if b.get("max_tokens") != 1)  # all but preflights


def peak_rss_mb(spec: Path, *args: str) -> tuple[float, int]:
    """Run the engine as a child of this process; its peak RSS (wait4) and exit code."""
    env = {**os.environ, "TEST_ENGINE_KEY": "k"}
    argv = [sys.executable, "-m", "engine", "run", str(spec), "--quiet", *args]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


# ---- the request path ---------------------------------------------------------------------------
def test_timeout_s_bounds_every_request_of_a_run_against_a_trickling_server(
    tmp_path: Path, fake_server
) -> None:
    # 5 KB answers at 1 KB/s: every byte arrives in time for a per-read timeout, never for the deadline
    fake_server.set(pad_bytes=5000, trickle_bps=1000)
    spec = write_spec(tmp_path, fake_server.url, cases=8, provider="timeout_s = 1\nmax_retries = 1")
    started = time.monotonic()
    proc = engine("run", spec, "--quiet", check=False)
    assert time.monotonic() - started < 30  # 2 attempts of 1 s per item, 8 at once (was minutes)
    assert proc.returncode == 3 and "8 of 8 items failed" in proc.stderr
    failed = outcomes(tmp_path / "out", "answer", "failed")
    assert len(failed) == 8 and all("within 1 s (timeout_s, body included)" in f["message"] for f in failed)


def test_a_huge_response_fails_its_item_and_memory_stays_flat(tmp_path: Path, fake_server) -> None:
    for folder in ("small", "huge"):
        (tmp_path / folder).mkdir()
    baseline, code = peak_rss_mb(write_spec(tmp_path / "small", fake_server.url, cases=8, concurrency=4))
    assert code == 0
    fake_server.set(pad_bytes=8 * 1024 * 1024, chunked=True)  # 4 in flight: 32 MB if buffered
    cap = "max_response_mb = 1"
    capped, code = peak_rss_mb(
        write_spec(tmp_path / "huge", fake_server.url, cases=8, concurrency=4, provider=cap)
    )
    assert code == 3
    failed = outcomes(tmp_path / "huge" / "out", "answer", "failed")
    assert len(failed) == 8 and all("larger than 1 MB" in f["message"] for f in failed)
    assert chat_requests(fake_server) == 16  # 8 + 8: not retried (the same request would be as large)
    assert capped - baseline < 16, (baseline, capped)  # benchmarks/response_cap.py: the full comparison


def test_every_provider_is_checked_before_the_first_request(tmp_path: Path, fake_server) -> None:
    def spec_with(model: str, key_env: str) -> Path:
        stages = TWO_PROVIDERS.format(url=fake_server.url, model=model, key_env=key_env)
        return write_spec(tmp_path, fake_server.url, cases=4, stages=stages)

    proc = engine("run", spec_with("test-model", "CHECKER_KEY_UNSET"), "--quiet", check=False)
    assert proc.returncode == 2 and "environment variable CHECKER_KEY_UNSET is not set" in proc.stderr
    assert fake_server.requests == 0  # the paid first stage never started
    proc = engine("run", spec_with("no-such-model", "TEST_ENGINE_KEY"), "--quiet", check=False)
    assert proc.returncode == 1 and "provider 'checker' failed its preflight" in proc.stderr
    assert "HTTP 404" in proc.stderr and "Traceback" not in proc.stderr
    assert fake_server.requests == 2 and chat_requests(fake_server) == 0  # two preflights, nothing paid


# ---- inputs ---------------------------------------------------------------------------------------
def test_a_bad_record_anywhere_is_one_line_naming_file_and_line(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=150)
    engine("run", spec, "--quiet")
    with open(tmp_path / "cases.jsonl", "ab") as f:
        f.write(orjson.dumps({"id": "c0150", "text": "no question field"}) + b"\n")
        f.write(orjson.dumps({"id": "c0151", "question": "fine"}) + b"\n")
    sent = fake_server.requests
    proc = engine("run", spec, "--quiet", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(
        f"error: {tmp_path / 'cases.jsonl'}:151: stage 'answer': the prompt uses {{question}}"
    )
    assert "has no field 'question'" in line
    assert fake_server.requests == sent  # refused before any request
    assert len(outcomes(tmp_path / "out", "answer", "kept")) == 150  # what was written stays


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"question": "q"}, "cases.jsonl:3: record has no 'id' field"),
        (
            {"id": None, "question": "q"},
            "cases.jsonl:3: 'id' must be a non-empty string or an integer, got None",
        ),
        ({"id": [1], "question": "q"}, "cases.jsonl:3: 'id' must be a non-empty string or an integer"),
        ({"id": " ", "question": "q"}, "cases.jsonl:3: 'id' must be a non-empty string or an integer"),
        ({"id": "c0000", "question": "q"}, "cases.jsonl:3: id 'c0000' repeats an earlier record's"),
    ],
)
def test_bad_ids_are_named_with_file_and_line(tmp_path: Path, record: dict, expected: str) -> None:
    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", cases=2)
    with open(tmp_path / "cases.jsonl", "ab") as f:
        f.write(orjson.dumps(record) + b"\n")
    with pytest.raises(SpecError, match=re.escape(expected)):
        asyncio.run(Pipeline(load_spec(spec), mode="status", progress=False).run())


# ---- misuse ---------------------------------------------------------------------------------------
def shell(command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TEST_ENGINE_KEY": "k"}
    return subprocess.run(
        ["bash", "-c", f"{command}; echo rc=${{PIPESTATUS[0]}}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ordinary_misuse_is_one_line_never_a_traceback(tmp_path: Path, fake_server, capsys) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=30)
    engine("run", spec, "--quiet")
    py = f"{sys.executable} -m engine"
    for command in (f"{py} status {spec} | true", f"{py} export {spec} --stage answer | true"):
        proc = shell(command)  # the reader is gone before the first write: a closed pipe
        assert proc.stderr == "" and proc.stdout == "rc=141\n", (command, proc.stderr)
    for args, expected in (
        (("-o", str(tmp_path)), f"error: -o {tmp_path}: is a folder; give a file name"),
        (
            ("--set", "foo=1"),
            "error: export --format jsonl: unknown option 'foo' (it takes no --set options)",
        ),
        (("--format", "sft", "--set", "foo=1"), "error: export --format sft: unknown option 'foo'"),
    ):
        assert main(["export", str(spec), "--stage", "answer", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(expected) and len(err.splitlines()) == 1, err


# ---- progress -------------------------------------------------------------------------------------
def test_progress_when_stderr_is_not_a_terminal_is_per_stage_and_status_prints_only_the_table(
    tmp_path: Path, fake_server, capsys
) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=12, concurrency=2, stages=CHAINED)
    fake_server.set(latency_s=0.1)
    fake_server.fail_next(4, 429, retry_after=0.5)  # the preflight (alive) and three items of the first stage
    proc = engine("run", spec, "--progress-every", "0.3", check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    first = [line for line in lines if line.startswith("first: ") and "/12 (" in line]
    second = [line for line in lines if line.startswith("second: ") and "/12 (" in line]
    assert first and second, proc.stderr  # a `tee`d run is not silent
    assert re.search(r"^first: \d+/12 \(\d+%\).* \d+ req/min .* 429s [1-3] ", first[-1])
    assert all(" 429s 0 retries 0 " in line for line in second)  # the second stage's own counters
    assert any("HTTP 429: new requests wait" in line for line in lines)  # logged, one line
    assert main(["status", str(spec)]) == 0
    printed = capsys.readouterr()
    assert printed.err == "" and printed.out.startswith("run t: complete")
