"""Retry policy and circuit breaker, over real HTTP: what is retried, how long we wait, when the run stops."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from tenacity import RetryCallState

from engine.client import LLMClient
from engine.errors import Fatal, RateLimited, RunStopped, Transient
from engine.providers import build_provider
from engine.retry import BackoffWait, CircuitBreaker
from engine.types import ChatRequest
from tests.server import FakeServer


def client_for(
    server: FakeServer, *, max_retries: int = 3, timeout_s: float = 5.0, **kwargs: Any
) -> LLMClient:
    table = {
        "kind": "openai",
        "base_url": server.url,
        "model": "test-model",
        "max_retries": max_retries,
        "timeout_s": timeout_s,
    }
    return LLMClient(build_provider("teacher", table), backoff_base_s=0.02, backoff_max_s=0.5, **kwargs)


def call(client: LLMClient, n: int = 1, *, concurrent: bool = False) -> list[Any]:
    """Make `n` calls (one after another, or all at once); return completions or the exceptions raised."""

    async def one(i: int) -> Any:
        try:
            return await client(ChatRequest([{"role": "user", "content": f"question {i}"}]))
        except Exception as exc:  # noqa: BLE001 - the tests look at what came back
            return exc

    async def go() -> list[Any]:
        try:
            if concurrent:
                return await asyncio.gather(*(one(i) for i in range(n)))
            return [await one(i) for i in range(n)]
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_429_waits_what_retry_after_says(fake_server: FakeServer) -> None:
    fake_server.fail_next(1, 429, retry_after=0.6)
    client = client_for(fake_server)
    (result,) = call(client)
    assert result.text == "question 0"
    assert fake_server.requests == 2 and fake_server.status_counts == {429: 1, 200: 1}
    gap = fake_server.arrivals[1] - fake_server.arrivals[0]
    assert 0.6 <= gap < 0.6 * 1.1 + 0.3  # honoured, with at most 10% jitter
    assert client.stats["rate_limited"] == 1 and client.stats["retries"] == 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retried_until_it_succeeds(fake_server: FakeServer, status: int) -> None:
    fake_server.fail_next(3, status)
    client = client_for(fake_server, max_retries=3)
    (result,) = call(client)
    assert result.text == "question 0" and fake_server.requests == 4
    assert client.stats["retries"] == 3 and client.stats["errors"] == 0


def test_timeout_is_retried(fake_server: FakeServer) -> None:
    fake_server.hang_next(1)
    (result,) = call(client_for(fake_server, timeout_s=0.3))
    assert result.text == "question 0" and fake_server.requests == 2


def test_malformed_body_is_retried(fake_server: FakeServer) -> None:
    fake_server.malformed_next(2)
    (result,) = call(client_for(fake_server))
    assert result.text == "question 0" and fake_server.requests == 3


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_are_sent_exactly_once(fake_server: FakeServer, status: int) -> None:
    fake_server.fail_next(1, status)
    client = client_for(fake_server, max_retries=5)
    (result,) = call(client)
    assert isinstance(result, Fatal) and result.status == status
    assert fake_server.requests == 1 and client.stats["retries"] == 0 and client.stats["errors"] == 1


def test_exhausted_retries_raise_the_last_error(fake_server: FakeServer) -> None:
    fake_server.fail_next(10, 500)
    client = client_for(fake_server, max_retries=2)
    (result,) = call(client)
    assert isinstance(result, Transient) and result.status == 500
    assert fake_server.requests == 3 and client.stats["errors"] == 1


def test_stop_run_error_fails_later_calls_without_a_request(fake_server: FakeServer) -> None:
    fake_server.set(api_key="sk-right")
    results = call(client_for(fake_server), 3)
    assert all(isinstance(r, Fatal) and r.stop_run for r in results)
    assert fake_server.requests == 1  # not one 401 per record


def test_backoff_honours_retry_after_and_caps_exponential() -> None:
    wait = BackoffWait(base_s=0.1, max_s=2.0)

    def state_with(exc: Exception, attempt: int) -> RetryCallState:
        state = RetryCallState(None, None, (), {})
        state.attempt_number = attempt
        state.set_exception((type(exc), exc, None))
        return state

    waits = [wait(state_with(RateLimited("slow down", retry_after=1.5), 1)) for _ in range(50)]
    assert all(1.5 <= w <= 1.65 for w in waits) and len(set(waits)) > 1  # jittered, never early
    late = [wait(state_with(Transient("503"), 10)) for _ in range(50)]
    assert all(0 <= w <= 2.0 for w in late) and max(late) > 0.5
    early = [wait(state_with(Transient("503"), 1)) for _ in range(50)]
    assert max(early) <= 0.1


def test_breaker_pauses_then_stops_the_run(fake_server: FakeServer) -> None:
    fake_server.set(fail_prob={500: 1.0})
    events: list[str] = []
    client = client_for(
        fake_server,
        max_retries=0,
        breaker_threshold=3,
        breaker_pause_s=0.5,
        on_event=lambda e, d: events.append(e),
    )
    start = time.monotonic()
    results = call(client, 10)
    assert [type(r) for r in results] == [Transient] * 5 + [RunStopped] * 5
    assert "3 consecutive requests failed again after a 0.5 s pause" in str(results[5])
    assert fake_server.requests == 6  # 3, pause, 3, then nothing more is sent
    assert fake_server.arrivals[3] - fake_server.arrivals[2] >= 0.5
    assert events == ["breaker_pause", "breaker_stop"] and time.monotonic() - start < 5


def test_a_success_resets_the_breaker() -> None:
    breaker = CircuitBreaker(threshold=3, pause_s=10, where="providers.t")
    for _ in range(5):
        assert breaker.failure(Transient("503")) is None
        assert breaker.failure(Transient("503")) is None
        breaker.success()  # two failures, then a success: never three in a row
    assert breaker.failure(Transient("503")) is None and breaker.failure(Transient("503")) is None
    assert breaker.failure(Transient("503")) == "pause" and breaker.paused_until > time.monotonic() + 9
