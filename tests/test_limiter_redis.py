"""The shared limiter (engine/limiter_redis.py) against a real redis-server: one limit for every process on
an account, and a fallback to 1/N of it, never to no limit, when Redis goes away.

In-process tests run two limiters (two "processes") side by side; the shard tests run `engine run
--shard I/3` as three real subprocesses against tests/server.py, which enforces RPM/TPM over a short
sliding window so that each test takes seconds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from engine.client import LLMClient
from engine.errors import SpecError
from engine.limiter import Limiter, build_limiter
from engine.limiter_redis import SharedLimiter, concurrency_share
from engine.providers import build_provider
from engine.spec import load_spec
from engine.types import ChatRequest, Completion, Usage
from tests.engine_helpers import ROOT, outcomes, read_lines, write_spec
from tests.redis_server import RedisServer, require_redis_server
from tests.server import FakeServer, last_user_text
from tests.test_limiter import most_in_window

KEY = "sk-test-secret-123"  # what tests/engine_helpers.engine() puts in $TEST_ENGINE_KEY


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(require_redis_server()) as server:
        yield server


def shared(server: RedisServer, shard: tuple[int, int], log: list[str] | None = None, **kw) -> SharedLimiter:
    kw.setdefault("max_concurrency", 8)
    sink = log.append if log is not None else None
    return SharedLimiter(url=server.url, account="acct", shard=shard, log=sink, **kw)


async def take_many(limiter: Limiter, n: int, stamps: list[float], tokens: int = 1, used: int = 0) -> None:
    for _ in range(n):
        async with limiter.slot(tokens):
            stamps.append(time.monotonic())
        if used:
            limiter.on_success(tokens, Completion("ok", usage=Usage(used, 0)))


# ---- two limiters, one account --------------------------------------------------------------------
def test_two_processes_share_one_request_rate(redis_server: RedisServer) -> None:
    async def go() -> list[float]:
        a, b = shared(redis_server, (0, 2), rpm=1200), shared(redis_server, (1, 2), rpm=1200)
        stamps: list[float] = []
        await asyncio.gather(take_many(a, 30, stamps), take_many(b, 30, stamps))
        await a.aclose()
        await b.aclose()
        assert a.shared and b.shared and a.fallbacks == b.fallbacks == 0
        return sorted(stamps)

    stamps = asyncio.run(go())  # 20 per second, 20 saved up: the same bucket as one process
    assert stamps[-1] - stamps[0] >= (60 - 20) / 20 * 0.95
    for width in (0.5, 1.0):
        assert most_in_window(stamps, width) <= 20 + 20 * width + 1


def test_the_request_cap_counts_every_process(redis_server: RedisServer) -> None:
    # A bucket of 40 (burst_s=120), but at most 20 requests in any 1 s span, whoever sends them.
    async def go() -> list[float]:
        kw = {"rpm": 20, "burst_s": 120.0, "span_s": 1.0}
        a, b = shared(redis_server, (0, 2), **kw), shared(redis_server, (1, 2), **kw)
        stamps: list[float] = []
        await asyncio.gather(take_many(a, 15, stamps), take_many(b, 15, stamps))
        await a.aclose()
        await b.aclose()
        return sorted(stamps)

    stamps = asyncio.run(go())
    assert most_in_window(stamps, 0.99) <= 20
    assert stamps[-1] - stamps[0] >= 0.95


def test_token_refunds_reach_every_process(redis_server: RedisServer) -> None:
    # 200 tokens/s, 200 saved up; each call reserves 100 and used 10: reconciled, 40 calls need ~1 s
    # (charged 100 each they would need 19 s).
    async def go() -> float:
        a, b = shared(redis_server, (0, 2), tpm=12000), shared(redis_server, (1, 2), tpm=12000)
        stamps: list[float] = []
        start = time.monotonic()
        await asyncio.gather(take_many(a, 20, stamps, 100, 10), take_many(b, 20, stamps, 100, 10))
        await a.aclose()
        await b.aclose()
        return time.monotonic() - start

    assert asyncio.run(go()) < 4.0


def test_a_429_in_one_process_pauses_the_others(redis_server: RedisServer) -> None:
    async def go() -> tuple[float, float]:
        a, b = shared(redis_server, (0, 2), rpm=6000), shared(redis_server, (1, 2), rpm=6000)
        async with a.slot(1):
            pass
        a.on_rate_limited(1, retry_after=0.6)
        await asyncio.sleep(0.05)  # the pause reaches Redis at the next turn of a's event loop
        start = time.monotonic()
        async with b.slot(1):
            waited_429 = time.monotonic() - start
        a.read_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "500ms"})
        await asyncio.sleep(0.05)
        start = time.monotonic()
        async with b.slot(1):
            waited_header = time.monotonic() - start
        await a.aclose()
        await b.aclose()
        return waited_429, waited_header

    waited_429, waited_header = asyncio.run(go())
    assert 0.45 <= waited_429 < 1.5 and 0.35 <= waited_header < 1.5


def test_max_concurrency_is_the_account_total() -> None:
    assert [concurrency_share(8, (i, 3)) for i in range(3)] == [3, 3, 2]
    assert [concurrency_share(2, (i, 3)) for i in range(3)] == [1, 1, 1]  # never below one
    assert sum(concurrency_share(1000, (i, 7)) for i in range(7)) == 1000


def test_one_key_per_account_and_the_key_is_never_stored(
    redis_server: RedisServer, fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEY_A", KEY)
    monkeypatch.setenv("KEY_B", "sk-other-key-456789")
    table = {"kind": "openai", "base_url": fake_server.url, "model": "test-model", "rpm": 600}
    first = build_provider("teacher", {**table, "api_key_env": "KEY_A"})
    same = build_provider("judge", {**table, "api_key_env": "KEY_A", "model": "other"})
    other = build_provider("teacher", {**table, "api_key_env": "KEY_B"})
    assert first.account() == same.account() != other.account()
    assert KEY not in first.account()

    assert type(build_limiter(first)) is Limiter  # no URL: in-process, as before
    limiter = build_limiter(first, redis_server.url, (1, 4))
    assert isinstance(limiter, SharedLimiter) and limiter.window.limit == 2  # 8 over 4 shards
    monkeypatch.setenv("ENGINE_REDIS_URL", redis_server.url)
    assert isinstance(build_limiter(first), SharedLimiter)

    async def go() -> None:
        client = LLMClient(first, limiter=limiter)
        await client(ChatRequest([{"role": "user", "content": "hello"}]))
        await client.aclose()

    asyncio.run(go())
    store = redis.Redis.from_url(redis_server.url)
    keys = store.keys("*")
    assert keys and all(first.account().encode() in k for k in keys)
    dump = b"".join(keys)
    for k in keys:
        dump += b"".join(store.hgetall(k).values()) if store.type(k) == b"hash" else b""
        dump += b"".join(store.zrange(k, 0, -1)) if store.type(k) == b"zset" else b""
    assert KEY.encode() not in dump and KEY[:8].encode() not in dump


def test_a_bad_limiter_url_is_one_line(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", run='limiter = "http://127.0.0.1:6379"')
    with pytest.raises(SpecError, match=r"spec.toml:5: run.limiter: .*redis"):
        load_spec(spec)


# ---- Redis gone ---------------------------------------------------------------------------------
def test_redis_gone_falls_back_to_a_share_then_rejoins(redis_server: RedisServer) -> None:
    log: list[str] = []

    async def go() -> tuple[list[float], float, float, int]:
        # alone: 20/s shared, 10/s as a fallback; 32 in flight, so up to 1.6 s are booked ahead
        limiter = shared(redis_server, (0, 2), log, rpm=1200, max_concurrency=64)
        stamps: list[float] = []
        stop = asyncio.Event()

        async def keep_sending() -> None:
            while not stop.is_set():
                await take_many(limiter, 1, stamps)

        workers = [asyncio.create_task(keep_sending()) for _ in range(40)]
        await asyncio.sleep(2.0)
        redis_server.kill()
        killed = time.monotonic()
        await asyncio.sleep(4.0)
        assert not limiter.shared and limiter.fallbacks == 1
        redis_server.start()  # a fresh Redis on the same port: it has lost every count
        restarted = time.monotonic()
        await asyncio.sleep(3.0)
        stop.set()
        await asyncio.gather(*workers)
        replayed = redis.Redis.from_url(redis_server.url).zcard(limiter.keys[1])
        assert limiter.shared and limiter.rejoins == 1
        await limiter.aclose()
        return stamps, killed, restarted, replayed

    stamps, killed, restarted, replayed = asyncio.run(go())
    alone = [t for t in stamps if killed + 2.0 < t < restarted]  # past the requests booked ahead
    back = [t for t in stamps if t > restarted]
    # never fail-open: what was booked ahead goes, then the shard keeps to half the limit
    assert most_in_window([t for t in stamps if t > killed], 1.0) <= 20 + 1
    assert 10 * 0.8 <= len(alone) / (restarted - killed - 2.0) <= 10 * 1.1
    # rejoined: the whole limit again, without the burst of a fresh bucket on top of the local requests
    assert most_in_window(back, 1.0) <= 20 + 2 and len(back) >= 20 * 2
    assert len([m for m in log if "does not answer" in m]) == 1
    assert len([m for m in log if "answers again" in m]) == 1
    assert replayed >= 80  # its own requests of the last minute are counted again by the new Redis


def test_a_frozen_redis_counts_as_gone(redis_server: RedisServer) -> None:
    log: list[str] = []

    async def go() -> tuple[float, bool]:
        limiter = shared(redis_server, (0, 2), log, rpm=6000)
        await take_many(limiter, 5, [])
        redis_server.freeze()
        start = time.monotonic()
        await take_many(limiter, 1, [])  # the call times out: the shard goes on alone
        fell_back = time.monotonic() - start
        redis_server.thaw()
        deadline = time.monotonic() + 5
        while not limiter.shared and time.monotonic() < deadline:
            await take_many(limiter, 1, [])
            await asyncio.sleep(0.05)
        rejoined = limiter.shared
        await limiter.aclose()
        return fell_back, rejoined

    fell_back, rejoined = asyncio.run(go())
    assert fell_back < 2.0 and rejoined
    assert "does not answer (TimeoutError" in log[0]


# ---- three real shards ----------------------------------------------------------------------------
RPM = 6000  # 100 requests per second for the three shards together
WINDOW_S = 2.0  # the server's sliding window
# The client may send its limit plus its one-second burst in any window (300 in 2 s): the server allows
# that with 7% to spare for timing jitter. Three shards each at the full limit send 3x as much.
SERVER_RPM = RPM * (WINDOW_S + 1) / WINDOW_S * 1.07


def run_shards(spec: Path, count: int, *, during: object = None) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "TEST_ENGINE_KEY": KEY}
    env.pop("ENGINE_REDIS_URL", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "engine", "run", str(spec), "--shard", f"{i}/{count}", "--quiet"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(1, count + 1)
    ]
    if callable(during):
        during()
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    for proc in done:
        assert proc.returncode == 0, f"{proc.args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return done


def shard_spec(tmp_path: Path, server: FakeServer, cases: int, limiter: str | None) -> Path:
    provider = f"rpm = {RPM}\ntpm = {RPM * 60}\nparams = {{ max_tokens = 16 }}\nchars_per_token = 4\n"
    run = f'limiter = "{limiter}"' if limiter else ""
    return write_spec(tmp_path, server.url, provider=provider, run=run, cases=cases, concurrency=48)


def steady_rate(server: FakeServer, out: Path, shards: int) -> float:
    """Requests per second while every shard was sending, past the first second's burst."""
    shard_of = {}
    for path in sorted((out / "answer" / "kept").glob("shard-*.jsonl")):
        for row in read_lines(path):
            shard_of[f"Answer briefly: {row['question']}"] = path.name
    per_shard: dict[str, list[float]] = {}
    for body, at in zip(server.bodies, server.arrivals, strict=True):
        name = shard_of.get(last_user_text(body))
        if name is not None:
            per_shard.setdefault(name, []).append(at)
    assert len(per_shard) == shards
    start = max(max(times[0] for times in per_shard.values()), min(server.arrivals) + 1.0)
    end = min(times[-1] for times in per_shard.values())
    assert end - start >= 2.0, "the shards hardly overlapped: the machine is too busy for this test"
    sent = sum(1 for t in server.arrivals if start <= t <= end)
    return sent / (end - start)


def check_every_record_once(out: Path, cases: int) -> None:
    kept = Counter(row["id"] for row in outcomes(out, "answer", "kept"))
    assert len(kept) == cases and set(kept.values()) == {1}
    assert outcomes(out, "answer", "failed") == [] and outcomes(out, "answer", "rejected") == []


def test_three_shards_share_the_account_limit(
    redis_server: RedisServer, fake_server: FakeServer, tmp_path: Path
) -> None:
    fake_server.set(latency_s=0.05, rpm=SERVER_RPM, tpm=SERVER_RPM * 60, rate_window_s=WINDOW_S)
    spec = shard_spec(tmp_path, fake_server, 900, redis_server.url)
    run_shards(spec, 3)
    assert fake_server.status_counts.get(429, 0) == 0
    check_every_record_once(tmp_path / "out", 900)
    assert steady_rate(fake_server, tmp_path / "out", 3) >= 0.9 * RPM / 60


def test_without_the_shared_limiter_three_shards_are_refused(fake_server: FakeServer, tmp_path: Path) -> None:
    # The control for the test above: the server's limit bites when each shard keeps the limit alone.
    fake_server.set(latency_s=0.05, rpm=SERVER_RPM, tpm=SERVER_RPM * 60, rate_window_s=WINDOW_S)
    run_shards(shard_spec(tmp_path, fake_server, 600, None), 3)
    assert fake_server.status_counts[429] >= 10
    check_every_record_once(tmp_path / "out", 600)


def test_redis_killed_mid_run_the_shards_finish_alone(
    redis_server: RedisServer, fake_server: FakeServer, tmp_path: Path
) -> None:
    fake_server.set(latency_s=0.05, rpm=SERVER_RPM, tpm=SERVER_RPM * 60, rate_window_s=WINDOW_S)
    spec = shard_spec(tmp_path, fake_server, 600, redis_server.url)

    def kill_at_a_third() -> None:
        deadline = time.monotonic() + 60
        while fake_server.requests < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        redis_server.kill()

    done = run_shards(spec, 3, during=kill_at_a_third)
    assert fake_server.status_counts.get(429, 0) <= 10
    check_every_record_once(tmp_path / "out", 600)
    for proc in done:
        assert proc.stderr.count("does not answer") == 1, proc.stderr
