"""Budgets and spend over the whole run: every invocation (killed ones too) and every shard, checked before
each request, so a run over budget sends nothing and `status` counts what the server saw."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson

from tests.engine_helpers import ROOT, engine_here, write_spec
from tests.test_run_lock import wait_for_lines


def spent(spec: Path) -> dict:
    return orjson.loads(engine_here("status", spec, "--json").stdout)["providers"]["teacher"]


def served_tokens(server) -> int:
    return sum(tokens for _, tokens in server.served_tokens)


def test_max_tokens_holds_across_invocations_and_a_spent_run_sends_nothing(
    tmp_path: Path, fake_server
) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=60, run="max_tokens = 800", concurrency=4)
    first = engine_here("run", spec, "--quiet", check=False)
    assert first.returncode == 1 and "budget reached" in first.stderr
    assert "raise  max_tokens" not in first.stderr  # `[run]` is text, not rich markup, in every line
    largest = max(tokens for _, tokens in fake_server.served_tokens)
    for _ in range(2):
        requests = fake_server.requests
        again = engine_here("run", spec, "--quiet", check=False)
        assert again.returncode == 1 and fake_server.requests == requests  # not even a preflight
        assert "raise [run] max_tokens" in again.stderr and str(spec) in again.stderr
    usage = spent(spec)
    tokens = usage["prompt_tokens"] + usage["completion_tokens"]
    assert tokens == served_tokens(fake_server)  # every answered request is counted, once
    assert 800 <= tokens <= 800 + largest  # at most one request past the budget
    assert usage["requests"] == fake_server.requests


def test_max_cost_counts_every_invocation(tmp_path: Path, fake_server) -> None:
    spec = write_spec(
        tmp_path, fake_server.url, cases=40, run="max_cost = 0.01", provider="price_in = 100\nprice_out = 100"
    )
    first = engine_here("run", spec, "--quiet", check=False)
    assert first.returncode == 1 and "max_cost" in first.stderr
    requests = fake_server.requests
    second = engine_here("run", spec, "--quiet", check=False)
    assert (
        second.returncode == 1
        and fake_server.requests == requests
        and "raise [run] max_cost" in second.stderr
    )
    cost = spent(spec)["cost"]
    assert abs(cost - served_tokens(fake_server) * 100 / 1e6) < 1e-9
    assert 0.01 <= cost <= 0.01 + max(t for _, t in fake_server.served_tokens) * 100 / 1e6


def test_a_killed_invocation_still_counts_and_status_matches_the_server(tmp_path: Path, fake_server) -> None:
    fake_server.set(latency_s=0.05)
    fake_server.fail_next(2, 500)  # retried requests are spend too (here: the preflight, twice)
    spec = write_spec(tmp_path, fake_server.url, cases=40, concurrency=2)
    journal = tmp_path / "out" / "answer" / "raw" / "shard-00000.jsonl"
    env = {**os.environ, "TEST_ENGINE_KEY": "k"}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(spec), "--quiet"], cwd=ROOT, env=env)
    wait_for_lines(journal, 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    usage, in_flight = spent(spec), 2  # what was in flight at the kill has no answer to count
    assert fake_server.requests - in_flight <= usage["requests"] <= fake_server.requests
    assert usage["errors"] == 2 and usage["requests"] >= 11  # 2 errors, the preflight, 8 answers
    tokens, largest = (
        usage["prompt_tokens"] + usage["completion_tokens"],
        max(t for _, t in fake_server.served_tokens),
    )
    assert served_tokens(fake_server) - in_flight * largest <= tokens <= served_tokens(fake_server)
    spec.write_text(spec.read_text().replace('out = "out"', f'out = "out"\nmax_tokens = {tokens}'))
    requests = fake_server.requests
    over = engine_here("run", spec, "--quiet", check=False)  # the killed invocation's spend is the budget
    assert over.returncode == 1 and "budget reached" in over.stderr and fake_server.requests == requests
