"""The openai provider against a real HTTP server: config checks, error translation, logprobs, preflight."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import tomllib
import traceback
from pathlib import Path

import pytest

from engine.errors import Fatal, RateLimited, SpecError, Transient
from engine.providers import build_provider
from engine.providers.openai import OpenAIProvider, to_token_topk
from engine.types import ChatRequest
from tests.server import FakeServer, fake_token_id

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-5ecret-key-0123456789"

SPEC_EXAMPLE = """
[providers.teacher]
kind = "openai"
base_url = "http://127.0.0.1:8011/v1"
model = "qwen2.5-72b-instruct"
api_key_env = "TEACHER_API_KEY"
rpm = 600
tpm = 400000
max_concurrency = 32
"""


def make(url: str, **table) -> OpenAIProvider:
    return build_provider("teacher", {"kind": "openai", "base_url": url, "model": "test-model", **table})


def ask(provider: OpenAIProvider, text: str = "hello there, friend", **params) -> object:
    async def go():
        try:
            return await provider.complete(ChatRequest([{"role": "user", "content": text}], params=params))
        finally:
            await provider.aclose()

    return asyncio.run(go())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- config ---------------------------------------------------------------------------------------
def test_spec_example_validates(monkeypatch) -> None:
    monkeypatch.setenv("TEACHER_API_KEY", KEY)
    table = tomllib.loads(SPEC_EXAMPLE)["providers"]["teacher"]
    provider = build_provider("teacher", table)
    assert isinstance(provider, OpenAIProvider)
    assert (provider.config.rpm, provider.config.tpm, provider.config.max_concurrency) == (600, 400000, 32)
    assert provider.config.model == "qwen2.5-72b-instruct"


def test_missing_key_variable_is_named(monkeypatch) -> None:
    monkeypatch.delenv("TEACHER_API_KEY", raising=False)
    table = tomllib.loads(SPEC_EXAMPLE)["providers"]["teacher"]
    with pytest.raises(SpecError, match=r"providers\.teacher\.api_key_env: .*TEACHER_API_KEY is not set"):
        build_provider("teacher", table)


@pytest.mark.parametrize(
    ("extra", "key"),
    [({"organization": "org-1"}, "organization"), ({"rpm": "fast"}, "rpm"), ({"model": ""}, "model")],
)
def test_bad_keys_are_named(extra: dict, key: str) -> None:
    with pytest.raises(SpecError, match=rf"providers\.teacher\.{key}: "):
        make("http://127.0.0.1:1/v1", **extra)


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(SpecError, match=r"providers\.x\.kind: expected one of local, openai, got 'vllm'"):
        build_provider("x", {"kind": "vllm"})


def test_importing_the_registry_imports_neither_torch_nor_openai() -> None:
    code = "import sys, engine.providers; print('torch' in sys.modules, 'openai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_no_key_variable_sends_EMPTY(fake_server: FakeServer) -> None:
    fake_server.set(api_key="EMPTY")  # what vLLM expects without --api-key
    assert ask(make(fake_server.url)).text == "hello there, friend"


# ---- answers, logprobs, headers -------------------------------------------------------------------
def test_logprobs_are_requested_and_ranked_by_value(fake_server: FakeServer) -> None:
    completion = ask(make(fake_server.url), top_logprobs=5)
    assert fake_server.bodies[0]["logprobs"] is True and fake_server.bodies[0]["top_logprobs"] == 5
    assert [p.token for p in completion.logprobs] == ["hell", "o th", "ere,", " fri", "end"]
    for pos in completion.logprobs:
        values = [v for _, v in pos.top]
        assert values == sorted(values, reverse=True) and len(values) == 5
        assert pos.top[0] == (pos.token, pos.logprob)  # the server scrambles the order; we rank


def test_token_ids_when_the_server_returns_them(fake_server: FakeServer) -> None:
    provider = make(fake_server.url, extra_body={"return_tokens_as_token_ids": True})
    request = ChatRequest([{"role": "user", "content": "abcdefgh"}], params={"top_logprobs": 2})
    request.extra_body = dict(provider.config.extra_body)

    async def go():
        try:
            return await provider.complete(request)
        finally:
            await provider.aclose()

    completion = asyncio.run(go())
    assert [p.token for p in completion.logprobs] == [fake_token_id("abcd"), fake_token_id("efgh")]
    assert all(isinstance(t, int) for p in completion.logprobs for t, _ in p.top)


def test_legacy_dict_top_logprobs_are_ranked_not_read_in_dict_order() -> None:
    entry = {"token": "token_id:7", "logprob": -0.2, "top_logprobs": {"token_id:9": -3.0, "token_id:7": -0.2}}
    (pos,) = to_token_topk([entry])
    assert pos.token == 7 and pos.top == [(7, -0.2), (9, -3.0)]


def test_usage_finish_reason_and_rate_headers_are_kept(fake_server: FakeServer) -> None:
    fake_server.set(rpm=600)
    completion = ask(make(fake_server.url), text="x" * 40, max_tokens=3)
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (10, 3)
    assert completion.finish_reason == "length" and completion.latency_s > 0
    assert completion.headers["x-ratelimit-remaining-requests"] == "599"


# ---- error translation: one request each, the right class -----------------------------------------
def test_429_carries_retry_after(fake_server: FakeServer) -> None:
    fake_server.fail_next(1, 429, retry_after=2.5)
    with pytest.raises(RateLimited) as info:
        ask(make(fake_server.url))
    assert info.value.retry_after == 2.5 and fake_server.requests == 1


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_is_transient(fake_server: FakeServer, status: int) -> None:
    fake_server.fail_next(1, status)
    with pytest.raises(Transient) as info:
        ask(make(fake_server.url))
    assert info.value.status == status


def test_malformed_body_is_transient(fake_server: FakeServer) -> None:
    fake_server.malformed_next(1)
    with pytest.raises(Transient, match="malformed response body"):
        ask(make(fake_server.url))


def test_hang_past_timeout_is_transient(fake_server: FakeServer) -> None:
    fake_server.hang_next(1)
    start = time.monotonic()
    with pytest.raises(Transient, match=r"no answer .* within 0.3 s"):
        ask(make(fake_server.url, timeout_s=0.3))
    assert time.monotonic() - start < 3


def test_timeout_is_a_deadline_for_the_whole_body(fake_server: FakeServer) -> None:
    # 40 bytes a second: a byte arrives every read, so only a whole-request deadline ends it
    fake_server.set(trickle_bps=40)
    start = time.monotonic()
    with pytest.raises(Transient, match=r"no answer .* within 1 s \(timeout_s, body included\)"):
        ask(make(fake_server.url, timeout_s=1))
    assert time.monotonic() - start < 2.5
    fake_server.set(trickle_bps=100_000)  # a slow but steady body within the deadline is fine
    assert ask(make(fake_server.url, timeout_s=5)).text == "hello there, friend"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_max_response_mb_fails_the_item(fake_server: FakeServer, chunked: bool) -> None:
    fake_server.set(pad_bytes=3 * 1024 * 1024, chunked=chunked)
    with pytest.raises(Fatal, match=r"larger than 1 MB .*; raise max_response_mb") as info:
        ask(make(fake_server.url, max_response_mb=1))
    assert not info.value.stop_run  # one item fails; the run goes on
    assert len(ask(make(fake_server.url, max_response_mb=4)).text) > 3 * 1024 * 1024


def test_teacher_forcing_has_the_same_deadline_and_size_cap(fake_server: FakeServer) -> None:
    decoded = {"text": "x"}

    def scorer(ids: list[int], k: int) -> list:  # vLLM's shape: the actual token at rank 1
        entry = {"logprob": -0.5, "rank": 1, "decoded_token": decoded["text"]}
        return [None] + [{str(t): entry} for t in ids[1:]]

    def score(provider: OpenAIProvider) -> object:
        async def go():
            try:
                request = ChatRequest([], params={"prompt_logprobs": 2}, prompt_ids=[5, 6, 7])
                return await provider.complete(request)
            finally:
                await provider.aclose()

        return asyncio.run(go())

    fake_server.set(scorer=scorer)
    rows = score(make(fake_server.url)).prompt_logprobs
    assert rows[0] is None and [(r.token, r.logprob) for r in rows[1:]] == [(6, -0.5), (7, -0.5)]
    body = fake_server.bodies[-1]  # vLLM's completions API: ids as the prompt, one new token
    assert body["prompt"] == [5, 6, 7] and body["max_tokens"] == 1 and body["prompt_logprobs"] == 2
    fake_server.set(trickle_bps=40)
    with pytest.raises(Transient, match=r"within 1 s \(timeout_s, body included\)"):
        score(make(fake_server.url, timeout_s=1))
    fake_server.set(trickle_bps=None)
    decoded["text"] = "x" * (2 * 1024 * 1024)  # two rows of 2 MB: prompt_logprobs over the cap
    with pytest.raises(Fatal, match=r"larger than 1 MB"):
        score(make(fake_server.url, max_response_mb=1))


def test_error_bodies_are_capped_too(fake_server: FakeServer) -> None:
    fake_server.fail_next(1, 400, message="x" * (2 * 1024 * 1024))
    with pytest.raises(Fatal, match="larger than 1 MB"):
        ask(make(fake_server.url, max_response_mb=1))


@pytest.mark.parametrize(
    ("status", "code", "message", "stop_run"),
    [
        (400, None, "bad temperature", False),
        (400, "context_length_exceeded", "This model's maximum context length is 8192 tokens", False),
        (429, "insufficient_quota", "You exceeded your current quota", True),
        (403, None, "forbidden", True),
    ],
)
def test_client_errors_are_fatal(fake_server: FakeServer, status, code, message, stop_run) -> None:
    fake_server.fail_next(1, status, message=message, code=code)
    with pytest.raises(Fatal) as info:
        ask(make(fake_server.url))
    assert info.value.stop_run is stop_run and info.value.status == status and message in str(info.value)


def test_wrong_key_is_fatal_and_never_shown(fake_server: FakeServer, monkeypatch) -> None:
    fake_server.set(api_key="sk-the-right-one")
    monkeypatch.setenv("TEACHER_API_KEY", KEY)
    with pytest.raises(Fatal) as info:
        ask(make(fake_server.url, api_key_env="TEACHER_API_KEY"))
    assert info.value.stop_run and info.value.status == 401
    text = "".join(traceback.format_exception(info.value))
    assert "Incorrect API key provided" in text and "$TEACHER_API_KEY" in text
    for fragment in (KEY, KEY[:8], KEY[-4:]):
        assert fragment not in text


def test_unknown_model_is_fatal(fake_server: FakeServer) -> None:
    with pytest.raises(Fatal, match="check model = 'gpt-7'") as info:
        ask(build_provider("teacher", {"kind": "openai", "base_url": fake_server.url, "model": "gpt-7"}))
    assert info.value.stop_run and info.value.status == 404 and fake_server.requests == 1


# ---- preflight ------------------------------------------------------------------------------------
def preflight(provider: OpenAIProvider) -> float:
    async def go():
        try:
            await provider.preflight()
        finally:
            await provider.aclose()

    start = time.monotonic()
    asyncio.run(go())
    return time.monotonic() - start


def test_preflight_asks_for_one_token(fake_server: FakeServer) -> None:
    assert preflight(make(fake_server.url)) < 3
    assert fake_server.requests == 1 and fake_server.bodies[0]["max_tokens"] == 1


@pytest.mark.parametrize("problem", ["bad key", "wrong model", "unreachable"])
def test_preflight_stops_fast(fake_server: FakeServer, monkeypatch, problem: str) -> None:
    monkeypatch.setenv("TEACHER_API_KEY", KEY)
    fake_server.set(api_key="sk-the-right-one")
    table = {
        "kind": "openai",
        "base_url": fake_server.url,
        "model": "test-model",
        "api_key_env": "TEACHER_API_KEY",
    }
    expected = {"bad key": "HTTP 401", "wrong model": "HTTP 404", "unreachable": "cannot reach"}[problem]
    if problem == "wrong model":
        fake_server.set(api_key=KEY)
        table["model"] = "no-such-model"
    if problem == "unreachable":
        table["base_url"] = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(Fatal, match=expected) as info:
        preflight(build_provider("teacher", table))
    assert time.monotonic() - start < 3
    assert info.value.stop_run and str(info.value).startswith("preflight failed: providers.teacher")
    assert KEY not in "".join(traceback.format_exception(info.value))


def test_standalone_server_process() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.server", "--port", str(port), "--model", "m1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout.readline().strip() == f"fake OpenAI server on http://127.0.0.1:{port}/v1"
        provider = build_provider(
            "p", {"kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m1"}
        )
        assert ask(provider, text="over the wire").text == "over the wire"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_local_tokenizer_gives_exact_prompt_estimates(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel({"[UNK]": 0, "chest": 1, "pain": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    provider = make("http://127.0.0.1:1/v1", tokenizer=str(tmp_path), params={"max_tokens": 100})
    request = ChatRequest([{"role": "system", "content": "chest pain"}, {"role": "user", "content": "a b c"}])
    assert provider.estimate_tokens(request) == 5 + 4 * 2 + 100
    with pytest.raises(SpecError, match=r"providers\.teacher\.tokenizer: no tokenizer.json at"):
        make("http://127.0.0.1:1/v1", tokenizer=str(tmp_path / "missing"))
