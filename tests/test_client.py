"""LLMClient, the `llm` generators call: defaults merged under each request, stats, events, preflight."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from engine.client import LLMClient
from engine.errors import Fatal, Halted
from engine.providers import build_provider
from engine.types import ChatRequest
from tests.server import FakeServer

KEY = "sk-client-test-key-9876543210"


def make_client(server: FakeServer, events: list | None = None, **table: Any) -> LLMClient:
    config = {"kind": "openai", "base_url": server.url, "model": "test-model", **table}
    hook = (lambda name, data: events.append((name, data))) if events is not None else None
    return LLMClient(build_provider("teacher", config), backoff_base_s=0.02, on_event=hook)


def run(client: LLMClient, *coros_of_client) -> list[Any]:
    async def go() -> list[Any]:
        try:
            return [await make(client) for make in coros_of_client]
        finally:
            await client.aclose()

    return asyncio.run(go())


def ask(text: str, **params: Any):
    return lambda client: client(ChatRequest([{"role": "user", "content": text}], params=params))


def test_provider_defaults_sit_under_the_request_params(fake_server: FakeServer) -> None:
    client = make_client(
        fake_server,
        params={"temperature": 0.2, "max_tokens": 50, "seed": 7},
        extra_body={"top_k": 20, "repetition_penalty": 1.1},
    )
    request = ChatRequest(
        [{"role": "user", "content": "hi"}], params={"temperature": 0.9}, extra_body={"top_k": 5}
    )
    run(client, lambda c: c(request))
    (body,) = fake_server.bodies
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.9, 50, 7)
    assert (body["top_k"], body["repetition_penalty"]) == (5, 1.1)  # extra_body lands in the JSON body
    assert request.params == {"temperature": 0.9}  # the caller's request is not modified


def test_stats_count_tokens_cost_and_429s(fake_server: FakeServer) -> None:
    fake_server.fail_next(1, 429, retry_after=0.05)
    client = make_client(fake_server, price_in=2.0, price_out=8.0)
    completions = run(client, ask("x" * 400), ask("y" * 40))
    assert [c.usage.prompt_tokens for c in completions] == [100, 10]
    stats = client.stats
    assert (stats["requests"], stats["ok"], stats["rate_limited"], stats["retries"], stats["errors"]) == (
        3,
        2,
        1,
        1,
        0,
    )
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (110, 110)
    assert stats["cost"] == pytest.approx((110 * 2.0 + 110 * 8.0) / 1e6)
    assert stats["window"] == client.limiter.window.size


def test_retry_events_say_what_happened_without_the_key(fake_server: FakeServer, monkeypatch) -> None:
    monkeypatch.setenv("CLIENT_KEY", KEY)
    fake_server.set(api_key=KEY)
    fake_server.fail_next(2, 503)
    events: list = []
    run(make_client(fake_server, events, api_key_env="CLIENT_KEY"), ask("hi"))
    assert [name for name, _ in events] == ["retry", "retry"]
    assert events[0][1]["provider"] == "teacher" and "HTTP 503" in events[0][1]["error"]
    assert KEY not in repr(events)


def client_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "engine.client"]


def test_a_429_storm_is_a_few_log_lines(fake_server: FakeServer, monkeypatch, caplog) -> None:
    monkeypatch.setenv("CLIENT_KEY", KEY)
    fake_server.set(api_key=KEY)
    fake_server.fail_next(40, 429, retry_after=0.01, message=f"slow down, {KEY}")
    client = make_client(fake_server, api_key_env="CLIENT_KEY", max_retries=60, max_concurrency=8)
    caplog.set_level(logging.INFO, logger="engine")

    async def go() -> None:
        await asyncio.gather(*(client(ChatRequest([{"role": "user", "content": str(i)}])) for i in range(8)))
        await client.aclose()

    asyncio.run(go())
    lines = client_lines(caplog)
    assert client.stats["rate_limited"] == 40 and client.stats["ok"] == 8
    assert 3 <= len(lines) <= 8, lines  # 40 429s, 40 retries and the window shrinking: a few lines
    assert any(line.startswith("providers.teacher: HTTP 429: new requests wait") for line in lines)
    assert any("retry 1 of 60 in" in line and "RateLimited: HTTP 429" in line for line in lines)
    assert any("concurrency window 8 -> 4 (HTTP 429)" in line for line in lines)
    assert any("more" in line for line in lines)  # what was held back is counted, not lost
    assert all(KEY not in line and KEY[:8] not in line for line in lines)


def test_a_breaker_pause_is_a_warning_and_shows_as_paused(fake_server: FakeServer, caplog) -> None:
    fake_server.set(fail_prob={500: 1.0})
    table = {"kind": "openai", "base_url": fake_server.url, "model": "test-model", "max_retries": 0}
    client = LLMClient(build_provider("teacher", table), breaker_threshold=3, breaker_pause_s=30)
    caplog.set_level(logging.INFO, logger="engine")

    async def go() -> float:
        for i in range(3):
            try:
                await client(ChatRequest([{"role": "user", "content": str(i)}]))
            except Exception:  # noqa: BLE001, S110 - three failures trip the breaker
                pass
        paused = client.paused_s()
        await client.aclose()
        return paused

    assert 25 < asyncio.run(go()) <= 30
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = warning.getMessage()
    assert message.startswith("providers.teacher: 3 requests in a row failed (last: Transient: HTTP 500 from")
    assert message.endswith("; pausing every request for 30 s")


def test_halt_sends_nothing_more(fake_server: FakeServer) -> None:
    client = make_client(fake_server)
    client.halt()
    with pytest.raises(Halted):
        run(client, ask("never sent"))
    assert fake_server.requests == 0


def test_max_concurrency_holds_at_the_server(fake_server: FakeServer) -> None:
    fake_server.set(latency_s=0.05)
    client = make_client(fake_server, max_concurrency=3)

    async def go() -> None:
        await asyncio.gather(*(client(ChatRequest([{"role": "user", "content": str(i)}])) for i in range(15)))
        await client.aclose()

    asyncio.run(go())
    assert fake_server.requests == 15 and fake_server.max_in_flight == 3


def test_scripted_answers_by_prompt_substring(fake_server: FakeServer) -> None:
    fake_server.script("diagnose", ['{"broken json', '{"ok": true}'])  # a malformed answer, then a good one
    fake_server.script("weather", "sunny")
    answers = run(make_client(fake_server), ask("please diagnose"), ask("please diagnose"), ask("weather?"))
    assert [a.text for a in answers] == ['{"broken json', '{"ok": true}', "sunny"]
    assert run(make_client(fake_server), ask("please diagnose"))[0].text == "please diagnose"  # queue used up


# ---- preflight ----------------------------------------------------------------------------------
def test_preflight_passes_on_a_healthy_server(fake_server: FakeServer) -> None:
    run(make_client(fake_server), lambda c: c.preflight())
    assert fake_server.requests == 1


def test_preflight_treats_429_as_alive(fake_server: FakeServer) -> None:
    fake_server.fail_next(1, 429, retry_after=30)
    start = time.monotonic()
    run(make_client(fake_server), lambda c: c.preflight())
    assert time.monotonic() - start < 2 and fake_server.requests == 1


def test_preflight_retries_a_5xx_blip_then_stops(fake_server: FakeServer) -> None:
    fake_server.fail_next(1, 502)
    run(make_client(fake_server), lambda c: c.preflight())
    assert fake_server.status_counts == {502: 1, 200: 1}
    fake_server.fail_next(5, 503)
    with pytest.raises(Fatal, match=r"preflight failed 3 times: .*HTTP 503") as info:
        run(make_client(fake_server), lambda c: c.preflight())
    assert info.value.stop_run and fake_server.status_counts[503] == 3


def test_preflight_stops_on_wrong_key_in_one_request(fake_server: FakeServer, monkeypatch) -> None:
    monkeypatch.setenv("CLIENT_KEY", KEY)
    fake_server.set(api_key="sk-something-else")
    start = time.monotonic()
    with pytest.raises(Fatal, match=r"HTTP 401 .*check the key in \$CLIENT_KEY") as info:
        run(make_client(fake_server, api_key_env="CLIENT_KEY"), lambda c: c.preflight())
    assert info.value.stop_run and fake_server.requests == 1 and time.monotonic() - start < 2
    assert KEY not in str(info.value) and KEY[:8] not in str(info.value)
