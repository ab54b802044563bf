"""An OpenAI-compatible HTTP server for tests and benchmarks, with failure modes you can switch on.

Runs aiohttp on 127.0.0.1 in a background thread with its own event loop, so sync tests, async tests
and subprocesses can all talk to it. Behaviour (latency, 429/5xx, hangs, malformed bodies, RPM/TPM
limits, API key, models, scripted answers, trickled or huge bodies) can be changed while it runs;
everything it receives is counted so tests can assert exactly.
Standalone: `python -m tests.server --port 8011 --latency 0.05`.

Teacher forcing as vLLM serves it: with `scorer = ModelScorer(model_dir)` (a real transformers model), a
`/v1/completions` request with token ids as `prompt` and `prompt_logprobs = k` gets vLLM's
`choices[0].prompt_logprobs`; without a scorer the field is left out, as a hosted API would.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

CHARS_PER_TOKEN = 4  # the fake tokenizer: every 4 characters of text are one token
# vLLM's answer to a chat request for a model whose tokenizer has no chat template (a base model)
NO_CHAT_TEMPLATE = (
    "As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat "
    "template if the tokenizer does not define one."
)


def count_tokens(text: str) -> int:
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def fake_token_id(token: str) -> int:
    return zlib.crc32(token.encode()) % 50_000


@dataclass
class Fault:
    kind: str  # "status" | "hang" | "malformed"
    status: int = 500
    retry_after: float | None = None
    message: str = ""
    code: str | None = None


@dataclass
class Behaviour:
    """What the server does; plain attributes, safe to assign from any thread while it runs."""

    latency_s: float = 0.0  # added before each successful answer
    hold: str | None = None  # answers to prompts containing this wait (received, counted) until set to None
    latency_per_token_s: float = 0.0  # ... plus this per completion token (longer answers take longer)
    fail_prob: dict[int, float] = field(default_factory=dict)  # {status: probability}, e.g. {429: 0.2}
    fail_when: dict[str, int] = field(default_factory=dict)  # {prompt substring: status}, every time
    retry_after: float | None = 1.0  # Retry-After sent with 429s (None: no header)
    hang_s: float = 30.0  # how long a "hang" fault sleeps before answering
    rpm: float | None = None  # enforced over a sliding `rate_window_s` window, scaled from per-minute
    tpm: float | None = None
    rate_window_s: float = 60.0
    api_key: str | None = None  # required bearer key; None: any key (or none) is accepted
    models: list[str] | None = field(default_factory=lambda: ["test-model"])  # None: any model is served
    answer: Callable[[dict[str, Any]], str] | None = None  # request body -> answer text
    shuffle_top: bool = True  # top_logprobs in a scrambled order, so clients must sort by logprob
    keep_bodies: bool = True  # keep every request body (turn off for long benchmarks)
    trickle_bps: float | None = None  # send answer bodies at this many bytes per second (slowloris)
    pad_bytes: int = 0  # pad every answer so its body is at least this many bytes (huge bodies)
    chunked: bool = False  # send answer bodies chunked, without Content-Length
    honour_token_ids: bool = True  # False: token strings even when asked for return_tokens_as_token_ids
    scorer: Callable[[list[int], int], list[Any]] | None = None  # (ids, k) -> vLLM prompt_logprobs
    max_logprobs: int = 20  # vLLM's --max-logprobs: a larger prompt_logprobs is a 400
    chat_template: bool = True  # False: a base model without one; vLLM answers chat requests with a 400


class ModelScorer:
    """vLLM-shaped `prompt_logprobs` from a real causal LM: entry 0 is None; entry t maps str(token id) ->
    {logprob, rank, decoded_token} for the top-k by rank, with the actual token ids[t] first (and extra
    when it ranks below k), as vLLM returns them. One forward pass per request, one request at a time."""

    def __init__(self, model_dir: Any):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self._lock = threading.Lock()

    def __call__(self, ids: list[int], k: int) -> list[Any]:
        import torch

        with self._lock, torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            logprobs = torch.log_softmax(logits, -1)
            top = logprobs.topk(k, -1)
            target = torch.tensor(ids[1:])
            actual = logprobs.gather(1, target[:, None])[:, 0]
            ranks = (logprobs > actual[:, None]).sum(-1) + 1
        rows: list[Any] = [None]
        for t, token in enumerate(ids[1:]):
            entry = {str(token): self._entry(token, actual[t].item(), int(ranks[t]))}
            for rank, (i, lp) in enumerate(zip(top.indices[t].tolist(), top.values[t].tolist(), strict=True)):
                entry.setdefault(str(i), self._entry(i, lp, rank + 1))
            rows.append(entry)
        return rows

    def _entry(self, token: int, logprob: float, rank: int) -> dict[str, Any]:
        return {"logprob": logprob, "rank": rank, "decoded_token": self.tokenizer.decode([token])}


def last_user_text(body: dict[str, Any]) -> str:
    if "prompt" in body:
        return str(body["prompt"])
    users = [m.get("content") or "" for m in body.get("messages", []) if m.get("role") == "user"]
    return users[-1] if users else ""


class FakeServer:
    def __init__(self, port: int = 0, seed: int = 0, **behaviour: Any):
        self.behaviour = Behaviour(**behaviour)
        self._port = port
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._faults: collections.deque[Fault] = collections.deque()
        self._scripts: list[tuple[str, collections.deque[str] | str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._window: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens) served
        self.reset_counts()

    # ---- controls ----------------------------------------------------------------------------
    def set(self, **changes: Any) -> None:
        for key, value in changes.items():
            if not hasattr(self.behaviour, key):
                raise AttributeError(f"Behaviour has no field {key!r}")
            setattr(self.behaviour, key, value)

    def fail_next(
        self,
        n: int,
        status: int = 503,
        retry_after: float | None = None,
        message: str = "",
        code: str | None = None,
    ) -> None:
        """Answer the next `n` requests with `status` (OpenAI-style error body with `message`, `code`)."""
        with self._lock:
            self._faults.extend(Fault("status", status, retry_after, message, code) for _ in range(n))

    def hang_next(self, n: int) -> None:
        with self._lock:
            self._faults.extend(Fault("hang") for _ in range(n))

    def malformed_next(self, n: int) -> None:
        with self._lock:
            self._faults.extend(Fault("malformed") for _ in range(n))

    def script(self, substring: str, answers: str | list[str]) -> None:
        """Answer prompts containing `substring`: a fixed text, or a queue used up in order."""
        with self._lock:
            queued = answers if isinstance(answers, str) else collections.deque(answers)
            self._scripts.append((substring, queued))

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = 0
            self.status_counts: collections.Counter[int] = collections.Counter()
            self.bodies: list[dict[str, Any]] = []
            self.arrivals: list[float] = []  # time.monotonic() of every request, in order
            self.served_tokens: list[tuple[float, int]] = []  # (time, prompt+completion) of 200s
            self.in_flight = 0
            self.max_in_flight = 0  # the most requests the server was handling at once

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def start(self) -> FakeServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True, name="fake-openai")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake server did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        future.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/completions", self._handle)
        app.router.add_get("/v1/models", self._models)
        # A short shutdown timeout: hung handlers must not hold up stop().
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self._port, backlog=1024)
        self._loop.run_until_complete(site.start())
        self._port = self._runner.addresses[0][1]
        ready.set()
        self._loop.run_forever()
        # handlers still sleeping (hangs, long latencies) end here, not as "Task was destroyed" noise
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    # ---- handlers ----------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        if (denied := self._check_key(request)) is not None:
            return denied
        names = self.behaviour.models or ["test-model"]
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in names]
        return _json({"object": "list", "data": data})

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError:
            return _error(400, "request body is not JSON", "invalid_request_error", None)
        b = self.behaviour
        with self._lock:
            self.requests += 1
            self.arrivals.append(time.monotonic())
            if b.keep_bodies:
                self.bodies.append(body)
            fault = self._faults.popleft() if self._faults else None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        response = None
        try:
            response = await self._respond(request, body, fault)
            return response
        finally:
            with self._lock:
                self.in_flight -= 1
                if response is not None:
                    self.status_counts[response.status] += 1

    async def _respond(self, request: web.Request, body: dict[str, Any], fault: Fault | None) -> web.Response:
        b = self.behaviour
        if (denied := self._check_key(request)) is not None:
            return denied
        if b.models is not None and body.get("model") not in b.models:
            msg = f"The model `{body.get('model')}` does not exist."
            return _error(404, msg, "invalid_request_error", "model_not_found")
        if not b.chat_template and "messages" in body:
            return _error(400, NO_CHAT_TEMPLATE, "BadRequestError", None)
        if fault is not None:
            if fault.kind == "hang":
                await asyncio.sleep(b.hang_s)
            elif fault.kind == "malformed":
                return web.Response(
                    status=200, body=b'{"id": "x", "choices": [', content_type="application/json"
                )
            else:
                return self._status(fault.status, fault.retry_after, fault.message, fault.code)
        prompt = _prompt_text(body)
        for substring, status in b.fail_when.items():
            if substring in prompt:
                return self._status(status, b.retry_after)
        for status, p in b.fail_prob.items():
            if p and self._rng.random() < p:
                return self._status(status, b.retry_after)
        text, finish = self._answer_text(body)
        prompt_tokens = count_tokens(_prompt_text(body))
        completion_tokens = count_tokens(text) if text else 0
        limited, remaining = self._admit(prompt_tokens + completion_tokens)
        if limited is not None:
            return self._status(429, limited, "rate limit reached (requests or tokens per minute)")
        delay = b.latency_s + b.latency_per_token_s * completion_tokens
        if delay:  # only answers are slow: refusals (401, 404, 429, 5xx) come back at once
            await asyncio.sleep(delay)
        while b.hold is not None and b.hold in _prompt_text(body):
            await asyncio.sleep(0.01)
        payload = self._payload(body, text, finish, prompt_tokens, completion_tokens)
        if body.get("prompt_logprobs") is not None and "messages" not in body:
            k, ids = int(body["prompt_logprobs"]), body.get("prompt")
            if k > b.max_logprobs:
                msg = f"Requested prompt logprobs of {k}, which is greater than max allowed: {b.max_logprobs}"
                return _error(400, msg, "BadRequestError", None)
            if b.scorer is not None and isinstance(ids, list):
                rows = await asyncio.get_running_loop().run_in_executor(None, b.scorer, ids, k)
                payload["choices"][0]["prompt_logprobs"] = rows
                payload["usage"]["prompt_tokens"] = len(ids)
        with self._lock:
            self.served_tokens.append((time.monotonic(), prompt_tokens + completion_tokens))
        if b.trickle_bps or b.chunked:
            return await self._stream(request, orjson.dumps(payload), remaining)
        return _json(payload, headers=remaining)

    async def _stream(self, request: web.Request, body: bytes, headers: dict[str, str]) -> web.StreamResponse:
        """Send `body` in pieces: at `trickle_bps` (ten writes a second), and/or chunked (no length)."""
        b = self.behaviour
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = "application/json"
        if not b.chunked:
            response.content_length = len(body)
        await response.prepare(request)
        step = max(1, int(b.trickle_bps / 10)) if b.trickle_bps else 1 << 20
        try:
            for start in range(0, len(body), step):
                await response.write(body[start : start + step])
                if b.trickle_bps:
                    await asyncio.sleep(step / b.trickle_bps)
            await response.write_eof()
        except ConnectionError:  # the client gave up (its deadline, or a size cap): nothing to finish
            pass
        return response

    def _check_key(self, request: web.Request) -> web.Response | None:
        want = self.behaviour.api_key
        if want is None or request.headers.get("Authorization") == f"Bearer {want}":
            return None
        # Echo the key it got (OpenAI echoes a masked one): clients must keep it out of their messages.
        got = request.headers.get("Authorization", "").removeprefix("Bearer ")
        msg = f"Incorrect API key provided: {got}. You can find your API key in your dashboard."
        return _error(401, msg, "invalid_request_error", "invalid_api_key")

    def _status(
        self, status: int, retry_after: float | None, message: str = "", code: str | None = None
    ) -> web.Response:
        headers = {"retry-after": f"{retry_after:g}"} if status == 429 and retry_after is not None else {}
        return _error(status, message or f"fake server error {status}", "server_error", code, headers)

    def _admit(self, tokens: int) -> tuple[float | None, dict[str, str]]:
        """Sliding-window RPM/TPM check: (retry_after or None, x-ratelimit-remaining-* headers)."""
        b = self.behaviour
        if b.rpm is None and b.tpm is None:
            return None, {}
        now, scale = time.monotonic(), b.rate_window_s / 60.0
        with self._lock:
            while self._window and self._window[0][0] <= now - b.rate_window_s:
                self._window.popleft()
            used_requests = len(self._window)
            used_tokens = sum(t for _, t in self._window)
            wait = (self._window[0][0] + b.rate_window_s - now) if self._window else 0.0
            if b.rpm is not None and used_requests + 1 > b.rpm * scale:
                return max(wait, 0.01), {}
            if b.tpm is not None and used_tokens + tokens > b.tpm * scale:
                return max(wait, 0.01), {}
            self._window.append((now, tokens))
        headers = {}
        if b.rpm is not None:
            headers["x-ratelimit-remaining-requests"] = str(int(b.rpm * scale - used_requests - 1))
        if b.tpm is not None:
            headers["x-ratelimit-remaining-tokens"] = str(int(b.tpm * scale - used_tokens - tokens))
        return None, headers

    def _answer_text(self, body: dict[str, Any]) -> tuple[str, str]:
        prompt = _prompt_text(body)
        text = None
        with self._lock:
            for substring, answers in self._scripts:
                if substring in prompt:
                    if isinstance(answers, str):
                        text = answers
                    elif answers:
                        text = answers.popleft()
                    else:
                        continue
                    break
        if text is None:
            text = self.behaviour.answer(body) if self.behaviour.answer else last_user_text(body)
        if self.behaviour.pad_bytes > len(text):
            text += " " + "x" * (self.behaviour.pad_bytes - len(text))
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if max_tokens is not None and count_tokens(text) > max_tokens:  # a 1-token preflight stays small
            return text[: max_tokens * CHARS_PER_TOKEN], "length"
        return text, "stop"

    def _payload(
        self, body: dict, text: str, finish: str, prompt_tokens: int, completion_tokens: int
    ) -> dict:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        chat = "messages" in body
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if body.get("logprobs") and chat:
            as_ids = bool(body.get("return_tokens_as_token_ids")) and self.behaviour.honour_token_ids
            choice["logprobs"] = {"content": self._logprobs(text, int(body.get("top_logprobs") or 0), as_ids)}
        kind = "chat.completion" if chat else "text_completion"
        return {
            "id": f"fake-{self.requests}",
            "object": kind,
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [choice],
            "usage": usage,
        }

    def _logprobs(self, text: str, k: int, as_ids: bool) -> list[dict[str, Any]]:
        """Deterministic fake log-probs: the chosen token ranks first; alternatives get fake ids."""
        chunks = [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]
        out = []
        for pos, chunk in enumerate(chunks):
            ids = [fake_token_id(chunk)] + [(fake_token_id(chunk) + 7 * r) % 50_000 for r in range(1, k)]
            values = [round(-0.05 - 0.5 * r - 0.01 * (pos % 5), 4) for r in range(max(k, 1))]
            names = [
                f"token_id:{i}" if as_ids else (chunk if r == 0 else f"<alt{r}>") for r, i in enumerate(ids)
            ]
            top = [
                {"token": n, "logprob": v, "bytes": None} for n, v in zip(names[:k], values[:k], strict=True)
            ]
            if self.behaviour.shuffle_top:
                top = top[1::2][::-1] + top[0::2]  # a fixed scramble, never best-first
            out.append({"token": names[0], "logprob": values[0], "bytes": None, "top_logprobs": top})
        return out


def _prompt_text(body: dict[str, Any]) -> str:
    if "prompt" in body:
        return str(body["prompt"])
    return "\n".join(str(m.get("content") or "") for m in body.get("messages", []))


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers
    )


def _error(
    status: int, message: str, kind: str, code: str | None, headers: dict | None = None
) -> web.Response:
    return _json({"error": {"message": message, "type": kind, "code": code, "param": None}}, status, headers)


def serve(port: int, **behaviour: Any) -> None:
    """Run a fake server in the foreground until interrupted (for benchmarks and manual tests)."""
    with FakeServer(port=port, **behaviour) as server:
        print(f"fake OpenAI server on {server.url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    p.add_argument("--p429", type=float, default=0.0, help="probability of answering 429")
    p.add_argument("--p500", type=float, default=0.0, help="probability of answering 500")
    p.add_argument("--rpm", type=float, default=None)
    p.add_argument("--tpm", type=float, default=None)
    p.add_argument("--rate-window", type=float, default=60.0, help="sliding window for --rpm/--tpm, seconds")
    p.add_argument("--api-key", default=None, help="require this bearer key")
    p.add_argument("--model", action="append", default=None, help="served model (repeatable); default: any")
    p.add_argument("--trickle", type=float, default=None, help="send answer bodies at this many bytes/s")
    p.add_argument("--pad-bytes", type=int, default=0, help="pad answers to bodies of at least this size")
    p.add_argument("--chunked", action="store_true", help="send answers chunked, without Content-Length")
    p.add_argument("--score-model", default=None, help="a transformers model folder: serve prompt_logprobs")
    a = p.parse_args(argv)
    serve(
        a.port,
        latency_s=a.latency,
        fail_prob={429: a.p429, 500: a.p500},
        rpm=a.rpm,
        tpm=a.tpm,
        rate_window_s=a.rate_window,
        api_key=a.api_key,
        models=a.model,
        keep_bodies=False,
        trickle_bps=a.trickle,
        pad_bytes=a.pad_bytes,
        chunked=a.chunked,
        scorer=ModelScorer(a.score_model) if a.score_model else None,
    )


if __name__ == "__main__":
    main()
