"""Client-side rate limiting for one provider: RPM and TPM token buckets plus an adaptive concurrency window.

Buckets refill continuously with a small burst cap (providers such as DashScope enforce per-second
limits). The window follows AIMD: it halves on a 429, shrinks when latency climbs with no 429 (a
saturated vLLM queues instead of refusing), and grows back by about one slot per window of successes.
Server hints (`retry-after`, `x-ratelimit-remaining-*`) pause or drain the buckets.

`build_limiter` picks this in-process limiter or, with `[run] limiter = "redis://..."`, the one shared by
every process on the same provider account (engine/limiter_redis.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from engine.providers.base import ProviderConfig
from engine.types import Completion

BURST_S = 1.0  # bucket capacity in seconds of refill: DashScope-style per-second limits allow no more
DEFAULT_PAUSE_S = 1.0  # pause after a 429 that carries no Retry-After
LATENCY_FACTOR = 3.0  # smoothed latency this many times the baseline counts as overload...
LATENCY_MIN_RISE_S = 0.1  # ...if it also rose this much: millisecond jitter on a fast server is not load
MIN_LATENCY_SAMPLES = 8
REDIS_URL_ENV = "ENGINE_REDIS_URL"  # the shared limiter's address when the spec has no `[run] limiter`


class TokenBucket:
    """`rate` units per second, at most `capacity` saved up. A take larger than the capacity waits for
    a full bucket and leaves it in debt, so big requests still go through at the right average rate."""

    def __init__(self, per_minute: float, burst_s: float = BURST_S):
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate * burst_s, 1.0)
        self.level = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()  # FIFO: waiters are served in arrival order

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, amount: float) -> None:
        async with self._lock:
            need = min(amount, self.capacity)
            self._refill()
            while self.level < need:
                await asyncio.sleep((need - self.level) / self.rate)
                self._refill()
            self.level -= amount

    def give_back(self, amount: float) -> None:
        """Reconcile an estimate: positive refunds unused units, negative charges extra (may go into debt)."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)

    def clamp(self, remaining: float) -> None:
        """The server says only `remaining` units are left: never believe we have more."""
        self._refill()
        self.level = min(self.level, remaining)

    def drain(self) -> None:
        self._refill()
        self.level = min(self.level, 0.0)


class MinuteCap:
    """At most `limit` requests in any `span_s` seconds, as a server counting per minute sees them.

    The bucket alone lets its burst through on top of `rpm` in the first minute (and after any idle
    spell), which a sliding-window server answers with 429s."""

    def __init__(self, limit: float, span_s: float = 61.0):
        self.limit = max(1, int(limit))
        self.span_s = span_s
        self.sent: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                while self.sent and self.sent[0] <= now - self.span_s:
                    self.sent.popleft()
                if len(self.sent) < self.limit:
                    break
                await asyncio.sleep(self.sent[0] + self.span_s - now)
            self.sent.append(time.monotonic())

    def seed(self, times: list[float]) -> None:
        """Count requests sent by other means (the shared limiter) in the last span as already sent."""
        now = time.monotonic()
        self.sent = deque(t for t in sorted(times) if t > now - self.span_s)


class LatencySignal:
    """Smoothed latency against its baseline, kept apart for answers of about the same length.

    Answers twice as long take about twice as long: a run that moves to longer answers (a new stage,
    a bigger max_tokens) must not read as overload. Latencies are compared only with answers of the
    same length class (output tokens within 2x), where a saturated server shows as a rise; answers
    without `usage` share one class."""

    def __init__(self, factor: float):
        self.factor = factor
        self.classes: dict[int, list[float]] = {}  # class -> [smoothed, baseline, samples]
        self.round_trip: float | None = None  # smoothed latency of every answer: one round trip

    def overloaded(self, latency: float, output_tokens: int) -> bool:
        if latency <= 0:
            return False
        self.round_trip = latency if self.round_trip is None else 0.8 * self.round_trip + 0.2 * latency
        state = self.classes.setdefault(max(output_tokens, 0).bit_length(), [latency, latency, 0])
        state[0] = 0.8 * state[0] + 0.2 * latency
        # A baseline that creeps up 0.1% per sample forgives a lasting shift within the class.
        state[1] = min(state[1] * 1.001, state[0])
        state[2] += 1
        smoothed, baseline, samples = state
        if samples < MIN_LATENCY_SAMPLES:
            return False
        return smoothed > self.factor * baseline and smoothed - baseline > LATENCY_MIN_RISE_S


class Window:
    """A concurrency limit whose size can change while requests wait.

    Waiters queue in arrival order and a release wakes only the next one: with 1000 requests in flight
    and as many waiting, waking every waiter on each release cost milliseconds of CPU per request."""

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.size = float(self.limit)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future] = deque()

    async def acquire(self) -> None:
        if not self._waiters and self.in_flight < max(1, int(self.size)):
            self.in_flight += 1
            return
        slot = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await slot  # set by _wake, which has counted us in
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():  # woken, then cancelled: hand the slot on
                self.in_flight -= 1
            elif slot in self._waiters:  # (a wake may have dropped it already)
                self._waiters.remove(slot)
            self._wake()
            raise

    async def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def resize(self, size: float) -> None:
        self.size = min(float(self.limit), max(1.0, size))
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < max(1, int(self.size)):
            slot = self._waiters.popleft()
            if not slot.done():
                self.in_flight += 1
                slot.set_result(None)


class Limiter:
    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        max_concurrency: int = 8,
        *,
        burst_s: float = BURST_S,
        default_pause_s: float = DEFAULT_PAUSE_S,
        latency_factor: float = LATENCY_FACTOR,
    ):
        self.requests = TokenBucket(rpm, burst_s) if rpm else None
        self.minute = MinuteCap(rpm) if rpm else None
        self.tokens = TokenBucket(tpm, burst_s) if tpm else None
        self.window = Window(max_concurrency)
        self.default_pause_s = default_pause_s
        self.latency = LatencySignal(latency_factor)
        self.paused_until = 0.0
        self.shrinks = 0
        self._last_shrink = 0.0

    @classmethod
    def from_config(cls, config: ProviderConfig, **kwargs: Any) -> Limiter:
        return cls(config.rpm, config.tpm, config.max_concurrency, **kwargs)

    @contextlib.asynccontextmanager
    async def slot(self, estimated_tokens: int) -> AsyncIterator[None]:
        """Wait for a window slot, the pause to end, one request and `estimated_tokens` tokens."""
        await self.window.acquire()
        try:
            while (wait := self.paused_until - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            await self._admit(estimated_tokens)
            yield
        finally:
            await self.window.release()

    async def _admit(self, estimated_tokens: int) -> None:
        """Take one request and the estimated tokens from the buckets, waiting as long as needed."""
        if self.requests:
            await self.requests.take(1)
        if self.minute:
            await self.minute.take()
        if self.tokens:
            await self.tokens.take(estimated_tokens)

    async def aclose(self) -> None:
        """Release what the limiter holds (the shared limiter's connections); nothing here."""

    # ---- feedback after each request -------------------------------------------------------------
    def on_success(self, estimated_tokens: int, completion: Completion) -> None:
        used = completion.usage.total_tokens
        if used:
            self._refund_tokens(estimated_tokens - used)
        self.read_headers(completion.headers)
        if self.latency.overloaded(completion.latency_s, completion.usage.completion_tokens):
            self._shrink(0.75)
        elif time.monotonic() - self._last_shrink > self._cooldown():
            self.window.resize(self.window.size + 1.0 / self.window.size)

    def on_rate_limited(self, estimated_tokens: int, retry_after: float | None) -> None:
        self._refund_tokens(estimated_tokens)  # a refused request used no tokens
        self._drain()
        self.pause(retry_after if retry_after is not None else self.default_pause_s)
        self._shrink(0.5)

    def on_error(self, estimated_tokens: int, *, tokens_used: bool) -> None:
        if not tokens_used:
            self._refund_tokens(estimated_tokens)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def read_headers(self, headers: Mapping[str, str]) -> None:
        """Believe the server's `x-ratelimit-remaining-*`; pause until `x-ratelimit-reset-*` at zero."""
        for kind in ("requests", "tokens"):
            remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
            if remaining is None:
                continue
            self._clamp(kind, remaining)
            if remaining <= 0:
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}", ""))
                self.pause(reset if reset is not None else self.default_pause_s)

    # ---- the buckets: the shared limiter mirrors each of these to Redis ----------------------------
    def _refund_tokens(self, amount: float) -> None:
        """Positive: tokens reserved but not used come back; negative: tokens used beyond the estimate."""
        if self.tokens:
            self.tokens.give_back(amount)

    def _clamp(self, kind: str, remaining: float) -> None:
        bucket = self.requests if kind == "requests" else self.tokens
        if bucket:
            bucket.clamp(remaining)

    def _drain(self) -> None:
        for bucket in (self.requests, self.tokens):
            if bucket:
                bucket.drain()

    # ---- adaptation ------------------------------------------------------------------------------
    def _cooldown(self) -> float:
        # 429s from requests already in flight say nothing new: shrink at most once per round trip.
        return max(0.5, self.latency.round_trip or 0.0)

    def _shrink(self, factor: float) -> None:
        now = time.monotonic()
        if now - self._last_shrink < self._cooldown():
            return
        self._last_shrink = now
        self.shrinks += 1
        self.window.resize(self.window.size * factor)


def build_limiter(
    provider: Any,
    url: str | None = None,
    shard: tuple[int, int] = (0, 1),
    log: Callable[[str], None] | None = None,
) -> Limiter:
    """The limiter for one provider in one process: shared through Redis when a URL is given (the spec's
    `[run] limiter`, else $ENGINE_REDIS_URL) and the provider names an account; else in-process."""
    url = url or os.environ.get(REDIS_URL_ENV) or None
    account = provider.account() if url else None
    if account is None:
        config = provider.config
        if url is None and shard[1] > 1 and (config.rpm or config.tpm) and log is not None:
            log(
                f"[yellow]{provider.name}: shard {shard[0] + 1}/{shard[1]} keeps to the whole rpm/tpm on its "
                "own; a limiter = 'redis://HOST:PORT/DB' in the run table shares them (docs/scale.md)"
            )
        return Limiter.from_config(config)
    from engine.limiter_redis import SharedLimiter  # imports redis only when asked for

    return SharedLimiter.from_config(provider.config, url=url, account=account, shard=shard, log=log)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """`x-ratelimit-reset-*` values: "20ms", "1s", "6m0s", or plain seconds."""
    if not text:
        return None
    if (plain := _number(text)) is not None:
        return plain
    parts = _DURATION.findall(text)
    return sum(float(n) * _UNIT_S[u] for n, u in parts) if parts else None
