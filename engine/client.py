"""LLMClient: the `llm` callable generators use. One provider behind its limiter, retry policy and
circuit breaker, with running stats (requests, 429s, retries, tokens, cost, current window). Retries,
429 pauses, breaker pauses and window changes are events: logged (engine/client_log.py) and passed to
`on_event`. `halt()` stops sending: a request not yet sent raises Halted instead."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from tenacity import RetryCallState

from engine.client_log import EventLog
from engine.errors import Fatal, Halted, ProviderError, RateLimited, RunStopped, Transient
from engine.limiter import Limiter
from engine.providers.base import Api, Provider
from engine.retry import (
    BACKOFF_BASE_S,
    BACKOFF_MAX_S,
    BREAKER_PAUSE_S,
    BREAKER_THRESHOLD,
    CircuitBreaker,
    retry_policy,
)
from engine.spend import Meter, Ticket
from engine.types import ChatRequest, Completion

EventHook = Callable[[str, dict[str, Any]], None]
PREFLIGHT_ATTEMPTS = 3  # a 5xx at start may be a blip; an unreachable port or a bad key is not
PREFLIGHT_RETRY_S = 1.0


class LLMClient:
    def __init__(
        self,
        provider: Provider,
        *,
        breaker_threshold: int = BREAKER_THRESHOLD,
        breaker_pause_s: float = BREAKER_PAUSE_S,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        limiter: Limiter | None = None,
        on_event: EventHook | None = None,
        meter: Meter | None = None,
    ):
        self.provider = provider
        self.where = f"providers.{provider.name}"
        self.limiter = limiter or Limiter.from_config(provider.config)
        self.breaker = CircuitBreaker(breaker_threshold, breaker_pause_s, where=self.where)
        self._backoff = (backoff_base_s, backoff_max_s)
        self._on_event = on_event
        self._meter = meter  # the run's ledger and budget; None: nothing recorded, no budget
        self._log = EventLog(self.where)
        self._stopped: Fatal | None = None  # a stop_run error: later calls fail at once, without a request
        self.halted = False  # the run is stopping: send nothing more
        self.on_wire: set[asyncio.Task] = set()  # tasks whose request is being answered right now
        self.stats: dict[str, Any] = dict.fromkeys(
            ("requests", "ok", "rate_limited", "retries", "errors", "prompt_tokens", "completion_tokens"), 0
        )
        self.stats.update(cost=0.0, window=self.limiter.window.size)

    async def __call__(self, request: ChatRequest) -> Completion:
        """One completion: provider defaults under the request's own params, then limiter + retries.

        Raises Fatal (not retried; `stop_run` when every record would fail the same way),
        ProviderError once retries are exhausted, RunStopped when the circuit breaker trips."""
        config = self.provider.config
        merged = dataclasses.replace(  # every other field (prompt_ids) as the generator set it
            request,
            params={**config.params, **request.params},
            extra_body={**config.extra_body, **request.extra_body},
        )
        estimate = self.provider.estimate_tokens(merged)
        base_s, max_s = self._backoff
        try:
            async for attempt in retry_policy(
                config.max_retries, base_s=base_s, max_s=max_s, before_sleep=self._before_sleep
            ):
                with attempt:
                    number = attempt.retry_state.attempt_number
                    return await self._attempt(merged, estimate, number)
        except ProviderError:
            self.stats["errors"] += 1
            raise
        raise AssertionError("unreachable: the retry policy re-raises the last error")

    def halt(self) -> None:
        """Send nothing more: requests not yet on the wire raise Halted (their items stay pending)."""
        self.halted = True

    def paused_s(self) -> float:
        """Seconds until new requests may go out (a 429 pause or a breaker pause), 0 when not paused."""
        return max(0.0, max(self.limiter.paused_until, self.breaker.paused_until) - time.monotonic())

    async def _attempt(self, request: ChatRequest, estimate: int, number: int) -> Completion:
        if self._stopped is not None:
            raise Fatal(str(self._stopped), status=self._stopped.status, stop_run=True)
        await self.breaker.wait()
        async with self.limiter.slot(estimate):
            if self.halted:
                raise Halted(f"{self.where}: the run is stopping; request not sent")
            async with self._metered(number, estimate) as ticket:
                return await self._send(request, estimate, ticket)

    async def _send(self, request: ChatRequest, estimate: int, ticket: Ticket) -> Completion:
        """One request on the wire, its ledger ticket filled in, the limiter and breaker told."""
        self.stats["requests"] += 1
        ticket.sent = True
        task = asyncio.current_task()
        if task is not None:
            self.on_wire.add(task)
        try:
            completion = await self.provider.complete(request)
        except RateLimited as exc:
            ticket.status = exc.status
            self.stats["rate_limited"] += 1
            window = int(self.limiter.window.size)
            self.limiter.on_rate_limited(estimate, exc.retry_after)
            self._emit("rate_limited", pause_s=self.paused_s())
            self._window_changed(window, "HTTP 429")
            raise
        except (Transient, Fatal) as exc:
            ticket.status = exc.status
            self.limiter.on_error(estimate, tokens_used=isinstance(exc, Transient))
            if isinstance(exc, Fatal) and exc.stop_run:
                self._stopped = exc
                self._emit("stop_run", error=str(exc))
                raise
            self._count_failure(exc)
            raise
        finally:
            self.on_wire.discard(task)  # type: ignore[arg-type]
            self.stats["window"] = self.limiter.window.size
        ticket.status, ticket.usage, ticket.cost = 200, completion.usage, self._cost(completion)
        window = int(self.limiter.window.size)
        self.limiter.on_success(estimate, completion)
        self._window_changed(window, "latency rising" if self.limiter.window.size < window else "recovering")
        self.breaker.success()
        self._count_success(completion)
        return completion

    def _metered(self, attempt: int, estimate: int, *, check: bool = True) -> Any:
        """The run's ledger and budget around one request (a no-op without a meter)."""
        if self._meter is None:
            return _Unmetered()
        price = max(self.provider.config.price_in, self.provider.config.price_out)
        return self._meter.request(self.provider.name, attempt, estimate, estimate * price / 1e6, check=check)

    def _cost(self, completion: Completion) -> float:
        usage, config = completion.usage, self.provider.config
        return (usage.prompt_tokens * config.price_in + usage.completion_tokens * config.price_out) / 1e6

    def _window_changed(self, before: int, why: str) -> None:
        after = int(self.limiter.window.size)
        if after != before:
            self._emit("window", old=before, new=after, why=why)

    def _count_failure(self, exc: ProviderError) -> None:
        change = self.breaker.failure(exc)
        if change == "pause":
            self._emit(
                "breaker_pause",
                pause_s=self.breaker.pause_s,
                threshold=self.breaker.threshold,
                error=self.breaker.last_error,
            )
        elif change == "stop":
            self._emit("breaker_stop", error=self.breaker.last_error)
        if self.breaker.stopped:
            raise RunStopped(self.breaker.stopped) from None

    def _count_success(self, completion: Completion) -> None:
        usage = completion.usage
        self.stats["ok"] += 1
        self.stats["prompt_tokens"] += usage.prompt_tokens
        self.stats["completion_tokens"] += usage.completion_tokens
        self.stats["cost"] += self._cost(completion)
        self.stats["window"] = self.limiter.window.size

    def _before_sleep(self, state: RetryCallState) -> None:
        self.stats["retries"] += 1
        exc = state.outcome.exception() if state.outcome else None
        wait_s = state.next_action.sleep if state.next_action else 0.0
        self._emit(
            "retry",
            attempt=state.attempt_number,
            max_retries=self.provider.config.max_retries,
            error=f"{type(exc).__name__}: {exc}",
            wait_s=wait_s,
        )

    def _emit(self, event: str, **data: Any) -> None:
        if self._on_event is not None:
            self._on_event(event, {"provider": self.provider.name, **data})
        self._log(event, data)

    async def preflight(self, api: Api = "chat") -> None:
        """One cheap request to `api` before fan-out; raises Fatal(stop_run=True) with a one-line reason."""
        for attempt in range(1, PREFLIGHT_ATTEMPTS + 1):
            try:
                # the probe counts against the server's RPM, and the ledger counts what reached a server
                async with self.limiter.slot(1), self._metered(0, 1, check=False) as ticket:
                    try:
                        answer = await self.provider.preflight(api)
                    except ProviderError as exc:
                        ticket.sent, ticket.status = exc.status is not None, exc.status
                        raise
                    if answer is not None:
                        ticket.sent, ticket.status, ticket.usage = True, 200, answer.usage
                        ticket.cost = self._cost(answer)
                return
            except RateLimited:
                return  # the endpoint answered: key and model are fine, the limiter deals with 429s
            except Transient as exc:
                if attempt == PREFLIGHT_ATTEMPTS:
                    message = f"preflight failed {attempt} times: {exc}"
                    raise Fatal(message, status=exc.status, stop_run=True) from None
                await asyncio.sleep(PREFLIGHT_RETRY_S)
            except Fatal as exc:
                if exc.stop_run:
                    raise
                raise Fatal(str(exc), status=exc.status, stop_run=True) from None

    async def aclose(self) -> None:
        self._log.flush()
        await self.limiter.aclose()
        await self.provider.aclose()


class _Unmetered:
    """A ticket nobody reads, for clients used without a run (tests, benchmarks)."""

    async def __aenter__(self) -> Ticket:
        return Ticket()

    async def __aexit__(self, *exc: Any) -> None:
        return None
