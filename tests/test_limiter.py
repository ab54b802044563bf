"""The limiter: buckets keep to RPM/TPM, the window adapts to 429s, latency and server headers.

Limits are scaled to a few requests per second so each test takes seconds; the fake server enforces its
own limits over a 1 s sliding window to check what arrives on the wire.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from engine.client import LLMClient
from engine.errors import RateLimited
from engine.limiter import Limiter, TokenBucket, Window, parse_duration
from engine.providers import build_provider
from engine.types import ChatRequest, Completion, Usage
from tests.server import FakeServer


def most_in_window(times: list[float], width: float, weights: list[float] | None = None) -> float:
    """The largest total in any sliding window of `width` seconds."""
    weights = weights or [1.0] * len(times)
    best, lo, total = 0.0, 0, 0.0
    for hi, t in enumerate(times):
        total += weights[hi]
        while times[lo] <= t - width:
            total -= weights[lo]
            lo += 1
        best = max(best, total)
    return best


def run_calls(server: FakeServer, n: int, text: str = "question {i}", **table: Any) -> tuple[LLMClient, list]:
    config = {"kind": "openai", "base_url": server.url, "model": "test-model", "max_retries": 0, **table}
    client = LLMClient(build_provider("teacher", config), backoff_base_s=0.02)

    async def one(i: int) -> Any:
        try:
            return await client(ChatRequest([{"role": "user", "content": text.format(i=i)}]))
        except Exception as exc:  # noqa: BLE001 - the tests count what came back
            return exc

    async def go() -> list:
        try:
            return await asyncio.gather(*(one(i) for i in range(n)))
        finally:
            await client.aclose()

    return client, asyncio.run(go())


# ---- buckets and window, no network -----------------------------------------------------------
def test_bucket_never_exceeds_burst_plus_rate() -> None:
    async def go() -> list[float]:
        bucket = TokenBucket(per_minute=1200, burst_s=0.5)  # 20/s, 10 saved up at most
        stamps = []
        for _ in range(40):
            await bucket.take(1)
            stamps.append(time.monotonic())
        return stamps

    stamps = asyncio.run(go())
    assert stamps[-1] - stamps[0] >= (40 - 10) / 20 * 0.95
    for width in (0.25, 0.5, 1.0):
        assert most_in_window(stamps, width) <= 10 + 20 * width + 1


def test_oversized_take_waits_for_a_full_bucket_then_owes() -> None:
    async def go() -> float:
        bucket = TokenBucket(per_minute=600, burst_s=1.0)  # 10/s, capacity 10
        start = time.monotonic()
        await bucket.take(25)  # full bucket: goes at once, 15 in debt
        await bucket.take(5)  # must wait for the debt plus 5: 2 s
        return time.monotonic() - start

    assert 1.9 <= asyncio.run(go()) < 3


def test_reconciling_with_usage_refunds_the_overestimate() -> None:
    async def go() -> float:
        limiter = Limiter(tpm=12000, max_concurrency=4)  # 200 tokens/s, 200 saved up at most
        start = time.monotonic()
        for _ in range(20):
            async with limiter.slot(estimated_tokens=100):
                pass
            limiter.on_success(100, Completion("ok", usage=Usage(5, 5)))  # used 10 of the 100
        return time.monotonic() - start

    assert asyncio.run(go()) < 1.0  # charged 100 tokens each, 20 calls would take 9 s


def test_window_caps_concurrency_and_resizes_while_waiting() -> None:
    async def go() -> tuple[int, int]:
        window, peak = Window(4), [0, 0]

        async def job(phase: int) -> None:
            await window.acquire()
            peak[phase] = max(peak[phase], window.in_flight)
            await asyncio.sleep(0.02)
            await window.release()

        await asyncio.gather(*(job(0) for _ in range(20)))
        window.resize(2)
        await asyncio.gather(*(job(1) for _ in range(20)))
        return peak[0], peak[1]

    assert asyncio.run(go()) == (4, 2)


def test_window_waiters_cancelled_never_leak_a_slot() -> None:
    async def go() -> tuple[int, int]:
        window = Window(2)
        await window.acquire()
        await window.acquire()
        waiting = [asyncio.create_task(window.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        waiting[0].cancel()  # cancelled while queued
        await window.release()  # wakes waiting[1]...
        waiting[1].cancel()  # ...which is cancelled before it runs: its slot goes to waiting[2]
        await asyncio.gather(*waiting, return_exceptions=True)
        return window.in_flight, sum(t.cancelled() for t in waiting)

    assert asyncio.run(go()) == (2, 2)


def test_rising_latency_without_429_shrinks_the_window() -> None:
    limiter = Limiter(max_concurrency=16)
    for _ in range(20):
        limiter.on_success(10, Completion("ok", latency_s=0.05))
    assert limiter.window.size == 16
    for _ in range(10):
        limiter.on_success(10, Completion("ok", latency_s=1.0))
    assert limiter.window.size < 16 and limiter.shrinks >= 1 and limiter.paused_until == 0


def test_longer_answers_are_not_read_as_overload() -> None:
    def answer(tokens: int, latency: float) -> Completion:
        return Completion("ok", usage=Usage(50, tokens), latency_s=latency)

    longer = Limiter(max_concurrency=16)
    for _ in range(20):
        longer.on_success(10, answer(100, 0.5))
    for _ in range(40):  # answers 4x longer take 4x as long: the server is no busier
        longer.on_success(10, answer(400, 2.0))
    assert longer.window.size == 16 and longer.shrinks == 0

    slower = Limiter(max_concurrency=16)  # the control: answers as long as before, 4x slower
    for _ in range(20):
        slower.on_success(10, answer(100, 0.5))
    for _ in range(40):
        slower.on_success(10, answer(100, 2.0))
    assert slower.window.size < 16 and slower.shrinks >= 1


def test_remaining_headers_clamp_and_pause() -> None:
    async def go() -> Limiter:
        limiter = Limiter(rpm=6000, tpm=600000)
        limiter.read_headers({"x-ratelimit-remaining-tokens": "40", "x-ratelimit-remaining-requests": "0"})
        limiter.read_headers({"x-ratelimit-reset-requests": "2s"})  # no remaining-*: nothing happens
        return limiter

    limiter = asyncio.run(go())
    assert limiter.tokens.level <= 40
    assert 0.5 < limiter.paused_until - time.monotonic() <= 1.0  # no reset header: default 1 s pause
    limiter.read_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"})
    assert limiter.paused_until - time.monotonic() > 359


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("20ms", "1s", "6m0s", "1h2m", "2.5", "", "soon")] == [
        0.02,
        1.0,
        360.0,
        3720.0,
        2.5,
        None,
        None,
    ]


# ---- against the server --------------------------------------------------------------------------
def test_rpm_keeps_the_server_under_its_limit(fake_server: FakeServer) -> None:
    fake_server.set(rpm=3000, rate_window_s=1.0)  # the server allows 50 per second
    start = time.monotonic()
    client, results = run_calls(fake_server, 60, rpm=1200, max_concurrency=32)  # we ask for 20 per second
    elapsed = time.monotonic() - start
    assert all(not isinstance(r, Exception) for r in results) and fake_server.status_counts == {200: 60}
    assert elapsed >= (60 - 20) / 20 * 0.95  # one second of burst, then 20 per second
    for width in (0.5, 1.0, 2.0):  # burst + rate x width, plus slack for bunching on the wire
        assert most_in_window(fake_server.arrivals, width) <= (20 + 20 * width) * 1.1 + 2


def test_without_a_client_limit_the_same_burst_is_refused(fake_server: FakeServer) -> None:
    # The control for the test above: the server's limit really bites.
    fake_server.set(rpm=3000, rate_window_s=1.0)
    client, results = run_calls(fake_server, 60, max_concurrency=64)
    assert fake_server.status_counts[429] >= 10
    assert client.stats["rate_limited"] == fake_server.status_counts[429]


def test_tpm_keeps_the_server_under_its_token_limit(fake_server: FakeServer) -> None:
    # Each call: 40-char prompt = 10 tokens, answer cut to 10 tokens; estimate 10 + 4 + 10 = 24.
    fake_server.set(tpm=24000, rate_window_s=1.0)  # the server allows 400 tokens per second
    text = "{i:040d}"
    start = time.monotonic()
    client, results = run_calls(
        fake_server,
        40,
        text=text,
        tpm=12000,
        chars_per_token=4,
        params={"max_tokens": 10},
        max_concurrency=32,
    )
    elapsed = time.monotonic() - start
    assert fake_server.status_counts == {200: 40} and client.stats["prompt_tokens"] == 400
    assert elapsed >= (800 - 200) / 200 * 0.9  # 200 tokens per second after a one-second burst
    times = [t for t, _ in fake_server.served_tokens]
    weights = [float(n) for _, n in fake_server.served_tokens]
    for width in (1.0, 2.0):
        assert most_in_window(times, width, weights) <= (200 + 200 * width) * 1.1 + 24


def test_429_halves_the_window_and_pauses(fake_server: FakeServer) -> None:
    fake_server.set(latency_s=0.05)
    fake_server.fail_next(1, 429, retry_after=0.4)  # the first of 16 in flight; the others take 50 ms
    client, results = run_calls(fake_server, 32, max_concurrency=16)
    assert sum(isinstance(r, RateLimited) for r in results) == 1 and client.limiter.shrinks == 1
    start = fake_server.arrivals[0]
    first, later = fake_server.arrivals[:16], fake_server.arrivals[16:]
    assert max(first) - start < 0.2 and min(later) - start >= 0.4  # nothing new during the pause
    resumed = [t for t in later if t - later[0] < 0.04]
    assert len(resumed) <= 9  # the halved window (8), perhaps grown by one


def test_window_shrinks_then_grows_back(fake_server: FakeServer) -> None:
    async def go() -> tuple[float, float, float]:
        config = {"kind": "openai", "base_url": fake_server.url, "model": "test-model", "max_concurrency": 8}
        client = LLMClient(build_provider("teacher", config), backoff_base_s=0.02)
        req = ChatRequest([{"role": "user", "content": "hi"}])
        fake_server.fail_next(1, 429, retry_after=0.1)
        await client(req)
        shrunk = client.limiter.window.size
        await asyncio.sleep(0.6)  # past the shrink cooldown
        await asyncio.gather(*(client(req) for _ in range(40)))
        grown = client.limiter.window.size
        await client.aclose()
        return shrunk, grown, client.stats["window"]

    shrunk, grown, reported = asyncio.run(go())
    assert shrunk == 4 and 4 < grown <= 8 and reported == grown
