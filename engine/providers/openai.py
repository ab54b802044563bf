"""The `openai` provider kind: any OpenAI-compatible chat endpoint (OpenAI, vLLM, DashScope, llama.cpp).

One request per call through `openai.AsyncOpenAI` with the SDK's own retries off; failures are
translated into engine.errors classes (the client decides what to retry). API keys never appear in
error text. `timeout_s` is a deadline for the whole request, body included (a server trickling its
answer cannot hold a request longer), and a body above `max_response_mb` is cut off and fails its item.

Teacher forcing (a ChatRequest with `prompt_ids`) goes to the completions API as vLLM serves it: the ids
as the prompt, one new token, `prompt_logprobs = k`. Only a self-hosted vLLM (or a server speaking its
protocol) answers that; an endpoint that answers without `prompt_logprobs` stops the run.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import math
import os
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import aiohttp
import httpx2
import openai
import orjson
from pydantic import Field

from engine.errors import Fatal, ProviderError, RateLimited, SpecError, Transient
from engine.providers.base import Api, Provider, ProviderConfig
from engine.types import ChatRequest, Completion, TokenTopK, Usage

PREFLIGHT_TIMEOUT_S = 20.0  # a 1-token answer; longer means the endpoint is not usable right now
KEPT_HEADERS = ("x-ratelimit-", "retry-after", "x-request-id")  # response headers copied to Completion
NO_KEY = "EMPTY"  # what vLLM and llama.cpp servers expect when they run without a key


class OpenAIConfig(ProviderConfig):
    path_fields: ClassVar[tuple[str, ...]] = ("tokenizer",)

    kind: Literal["openai"] = "openai"
    model: str = Field(min_length=1)
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = None  # NAME of the environment variable holding the key; unset: no key
    tokenizer: str | None = None  # local tokenizer.json (or its folder) for token estimates
    max_response_mb: float = Field(
        16.0, gt=0, description="a response body above this many MB fails its item instead of filling memory"
    )


class OpenAIProvider(Provider):
    kind = "openai"
    Config = OpenAIConfig
    config: OpenAIConfig

    def __init__(self, name: str, config: OpenAIConfig, *, cache_dir: Any = None):
        super().__init__(name, config, cache_dir=cache_dir)
        self._where = f"providers.{name}"
        self._key = self._read_key()
        self._tokenizer = self._load_tokenizer()
        self._max_bytes = int(config.max_response_mb * 1024 * 1024)
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=self._key,
            max_retries=0,  # engine/retry.py retries, by error class
            timeout=httpx2.Timeout(config.timeout_s, connect=min(config.timeout_s, 10.0)),
            # aiohttp transport: about half the client CPU per request of the default httpx2 pool,
            # whose every request polls every pooled connection (benchmarks/engine_throughput.py)
            http_client=openai.DefaultAioHttpClient(
                timeout=httpx2.Timeout(config.timeout_s, connect=min(config.timeout_s, 10.0)),
                event_hooks={"response": [self._cap_body]},
            ),
        )

    def _read_key(self) -> str:
        env = self.config.api_key_env
        if env is None:
            return NO_KEY
        key = os.environ.get(env)
        if not key:
            raise SpecError(
                f"{self._where}.api_key_env: environment variable {env} is not set; "
                f"export {env}=<key>, or remove api_key_env for a server without a key"
            )
        return key

    def _load_tokenizer(self) -> Any:
        if self.config.tokenizer is None:
            return None
        path = Path(self.config.tokenizer)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise SpecError(f"{self._where}.tokenizer: no tokenizer.json at {path}")
        from tokenizers import Tokenizer  # light (no torch); only needed when configured

        return Tokenizer.from_file(str(path))

    def estimate_tokens(self, request: ChatRequest) -> int:
        if self._tokenizer is None or request.prompt_ids is not None:
            return super().estimate_tokens(request)
        texts = [m.get("content") or "" for m in request.messages]
        prompt = sum(len(e.ids) for e in self._tokenizer.encode_batch(texts, add_special_tokens=False))
        max_tokens = request.params.get("max_tokens") or self.config.params.get("max_tokens") or 256
        return prompt + 4 * len(request.messages) + int(max_tokens)

    async def complete(self, request: ChatRequest) -> Completion:
        if request.prompt_ids is not None:
            return await self._prompt_logprobs(request)
        params = dict(request.params)
        if params.get("top_logprobs"):
            params["logprobs"] = True  # the API rejects top_logprobs without it
        return await self._create(request.messages, params, request.extra_body, self.config.timeout_s)

    async def preflight(self, api: Api = "chat") -> Completion | None:
        """A 1-token answer from the API the stages use: a capture stage's teacher may be a base model
        served without a chat template, whose chat endpoint fails although /completions works."""
        timeout = min(self.config.timeout_s, PREFLIGHT_TIMEOUT_S)
        try:
            if api == "completions":
                body = {"model": self.config.model, "prompt": "ping", "max_tokens": 1}
                return await self._post("/completions", body, timeout, self._to_completion)
            return await self._create([{"role": "user", "content": "ping"}], {"max_tokens": 1}, {}, timeout)
        except RateLimited:
            return None  # reachable, key and model accepted; the limiter handles the rate
        except Fatal as exc:
            raise Fatal(f"preflight failed: {exc}", status=exc.status, stop_run=True) from None
        except _Unreachable as exc:
            raise Fatal(f"preflight failed: {exc}", stop_run=True) from None

    async def _create(self, messages: list, params: dict, extra_body: dict, timeout: float) -> Completion:
        body = {"model": self.config.model, "messages": messages, **params, **(extra_body or {})}
        return await self._post("/chat/completions", body, timeout, self._to_completion)

    async def _prompt_logprobs(self, request: ChatRequest) -> Completion:
        """Teacher forcing through vLLM's completions API: every prompt position's top-k, no generation.
        The temperature is pinned to 1: a server computing processed log-probs must not sharpen them."""
        ids = [int(t) for t in request.prompt_ids or []]
        k = int(request.params.get("prompt_logprobs") or 0)
        body = {**request.extra_body, "model": self.config.model, "prompt": ids}
        body |= {"max_tokens": 1, "temperature": 1.0, "prompt_logprobs": k}

        def parse(resp: dict[str, Any], headers: dict[str, str], latency: float) -> Completion:
            completion = self._to_completion(resp, headers, latency)
            rows = resp["choices"][0].get("prompt_logprobs")
            if rows is None:
                raise Fatal(
                    f"{self._where}: {self.config.base_url}/completions answered without prompt_logprobs; "
                    "capturing a teacher's top-k needs a vLLM server (or one speaking its protocol): "
                    "hosted APIs such as DashScope or DeepSeek do not score given token ids; distil them "
                    "with SFT",
                    stop_run=True,
                )
            completion.prompt_logprobs = prompt_topk(rows, ids, self._where)
            return completion

        return await self._post("/completions", body, self.config.timeout_s, parse)

    async def _post(self, path: str, body: dict, timeout: float, parse: Any) -> Completion:
        start = time.monotonic()
        deadline = asyncio.timeout(timeout)  # the SDK's timeouts are per read: a trickle never ends them
        try:
            # The SDK's plain `post` keeps its auth, error classes and transport but skips the typed
            # request transform and the pydantic response models: a third of the client CPU per request.
            async with deadline:
                raw = await self._client.post(
                    path, cast_to=httpx2.Response, body=body, options={"timeout": timeout}
                )
            headers = {k.lower(): v for k, v in raw.headers.items() if k.lower().startswith(KEPT_HEADERS)}
            return parse(orjson.loads(raw.content), headers, time.monotonic() - start)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise _Unreachable(self._no_answer(timeout)) from None
        except _TooLarge as exc:
            raise Fatal(
                f"{self._where}: response from {self.config.base_url} is larger than "
                f"{self.config.max_response_mb:g} MB ({exc}); raise max_response_mb if that is expected"
            ) from None
        except openai.APIError as exc:
            raise self._translate(exc, timeout) from None
        except (ValueError, LookupError, AttributeError, TypeError) as exc:  # JSON errors: ValueError
            raise Transient(f"{self._where}: malformed response body ({type(exc).__name__})") from None

    async def _cap_body(self, response: httpx2.Response) -> None:
        """httpx response hook, before the body is read: refuse or count it against max_response_mb."""
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_bytes:
            raise _TooLarge(f"Content-Length {int(length)} bytes")
        response.stream = _CappedStream(response.stream, self._max_bytes)

    def _no_answer(self, timeout: float) -> str:
        url = self.config.base_url
        return f"{self._where}: no answer from {url} within {timeout:g} s (timeout_s, body included)"

    def _to_completion(self, resp: dict[str, Any], headers: dict[str, str], latency: float) -> Completion:
        choice = resp["choices"][0]
        usage = resp.get("usage") or {}
        content = (choice.get("logprobs") or {}).get("content")
        text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
        return Completion(
            text=text or "",
            finish_reason=choice.get("finish_reason"),
            usage=Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0),
            model=resp.get("model") or self.config.model,
            latency_s=latency,
            logprobs=to_token_topk(content) if content is not None else None,
            headers=headers,
        )

    def _translate(self, exc: openai.APIError, timeout: float) -> ProviderError:
        where, url = self._where, self.config.base_url
        if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
            return _Unreachable(self._no_answer(timeout))
        if isinstance(exc, openai.APIConnectionError):
            return _Unreachable(f"{where}: cannot reach {url}: {self._redact(str(exc.__cause__ or exc))}")
        if not isinstance(exc, openai.APIStatusError):  # a 200 whose body does not fit the schema
            return Transient(f"{where}: malformed response body from {url}")
        status, code = exc.status_code, str(exc.code or "")
        detail = self._redact(_server_message(exc))
        text = f"{where}: HTTP {status} from {url}: {detail}"
        if status == 429:
            if code == "insufficient_quota":
                return Fatal(f"{text}; add credit or use another key", status=status, stop_run=True)
            return RateLimited(text, retry_after=_retry_after(exc.response.headers))
        if status in (401, 403):
            hint = (
                f"check the key in ${self.config.api_key_env}"
                if self.config.api_key_env
                else "set api_key_env"
            )
            return Fatal(f"{text}; {hint}", status=status, stop_run=True)
        if status == 404:
            hint = f"check model = {self.config.model!r} and base_url (GET {url}/models lists the models)"
            return Fatal(f"{text}; {hint}", status=status, stop_run=True)
        if status in (408, 409) or status >= 500:
            return Transient(text, status=status)
        if code == "context_length_exceeded" or "context length" in detail.lower():
            return Fatal(f"{text}; shorten the prompt or lower max_tokens", status=status)
        return Fatal(text, status=status)

    def _redact(self, text: str) -> str:
        key = self._key
        if key and key != NO_KEY:
            text = text.replace(key, "***")
            if len(key) >= 12:  # servers echo masked keys ("sk-abc1...wxyz"): hide the visible ends too
                text = text.replace(key[:8], "***").replace(key[-4:], "***")
        return text

    def account(self) -> str:
        # the endpoint and the key: two specs (or runs) with the same key on the same endpoint share a limit
        blob = f"{self.config.base_url.rstrip('/')}\n{self._key}".encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    async def aclose(self) -> None:
        await self._client.close()


def _refused(exc: BaseException) -> bool:
    """The aiohttp transport reports a refused connection as a connect *timeout*: look underneath."""
    while exc is not None:
        if isinstance(exc, aiohttp.ClientConnectorError):
            return True
        exc = exc.__cause__
    return False


class _Unreachable(Transient):
    """Connection refused or timed out: retried during a run, fatal at preflight."""


class _TooLarge(Exception):
    """A response body above max_response_mb (not an httpx error, so the SDK lets it through as is)."""


class _CappedStream(httpx2.AsyncByteStream):
    """The response's byte stream, stopped with _TooLarge once more than `limit` bytes came in."""

    def __init__(self, inner: Any, limit: int):
        self._inner, self._limit = inner, limit

    async def __aiter__(self) -> Any:
        received = 0
        async for chunk in self._inner:
            received += len(chunk)
            if received > self._limit:
                raise _TooLarge(f"more than {self._limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def to_token_topk(content: list[Any]) -> list[TokenTopK]:
    """OpenAI-style `logprobs.content` (SDK objects or dicts) -> TokenTopK, alternatives best first."""
    out = []
    for entry in content:
        top = _get(entry, "top_logprobs") or []
        if isinstance(top, dict):  # legacy completions format: {token: logprob}
            pairs = [(_token(t), float(lp)) for t, lp in top.items()]
        else:
            pairs = [(_token(_get(t, "token")), float(_get(t, "logprob"))) for t in top]
        pairs.sort(key=lambda p: p[1], reverse=True)  # rank by value: servers do not promise an order
        out.append(TokenTopK(_token(_get(entry, "token")), float(_get(entry, "logprob")), pairs))
    return out


def prompt_topk(rows: list[Any], prompt_ids: list[int], where: str) -> list[TokenTopK | None]:
    """vLLM's `prompt_logprobs` -> one TokenTopK per prompt id (None where the server gives none, always
    the first). Entry t maps str(token id) -> {logprob, rank, decoded_token}: the top-k by rank plus the
    actual token prompt_ids[t] when it ranks lower. Entries are kept in rank order; -9999 (vLLM's JSON
    stand-in for -inf) and NaN become -inf."""
    if len(rows) != len(prompt_ids):
        raise Fatal(f"{where}: {len(rows)} prompt_logprobs for a prompt of {len(prompt_ids)} token ids")
    out: list[TokenTopK | None] = []
    for token, entry in zip(prompt_ids, rows, strict=True):
        if not entry:
            out.append(None)
            continue
        scored = [(int(t), _logprob(v["logprob"]), v.get("rank") or math.inf) for t, v in entry.items()]
        scored.sort(key=lambda e: (e[2], -e[1]))  # by rank, as the server ranked them
        actual = entry.get(str(token)) or {}
        logprob = _logprob(actual["logprob"]) if "logprob" in actual else -math.inf
        top: list[tuple[int | str, float]] = [(t, lp) for t, lp, _ in scored]
        out.append(TokenTopK(token, logprob, top, text=actual.get("decoded_token")))
    return out


def _logprob(value: Any) -> float:
    value = float(value)
    return -math.inf if math.isnan(value) or value <= -9999.0 else value


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _token(token: Any) -> int | str:
    # vLLM's return_tokens_as_token_ids answers "token_id:123": ids survive byte-fragment tokens
    if isinstance(token, str) and token.startswith("token_id:") and token[9:].isdigit():
        return int(token[9:])
    return token


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        body = body.get("error", body) if isinstance(body.get("error"), dict) else body
        message = body.get("message") or body.get("detail") or ""
    else:
        message = str(body or exc.message)
    return " ".join(str(message).split())[:300]


def _retry_after(headers: Any) -> float | None:
    """Retry-After in seconds: `retry-after-ms`, `retry-after` as seconds or as an HTTP date."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None
