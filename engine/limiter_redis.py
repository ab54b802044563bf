"""One rate limit for every process on the same provider account, kept in Redis.

With `[run] limiter = "redis://HOST:PORT/DB"` (or $ENGINE_REDIS_URL) the request and token buckets (the
same ~1 s burst as the in-process limiter), the per-61-s request cap and the pause after a 429 live in
Redis, changed only by the two small Lua scripts below, which read the time from Redis (`TIME`): the
machines' clocks never matter. The adaptive concurrency window stays per process, sized
max_concurrency / N. A process admits one request at a time through Redis (FIFO within the process),
so a wait costs one round trip, not one per waiter.

Redis unreachable, or slower than REDIS_TIMEOUT_S: the process falls back to the in-process limiter at
1/N of the account's limits (never to no limit), says so once, and rejoins when Redis answers again,
first re-sending its own requests of the last minute so that a restarted Redis still counts them.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio
import redis.exceptions

from engine.errors import SpecError
from engine.limiter import BURST_S, Limiter

KEY_PREFIX = "engine:limit:"
MINUTE_SPAN_S = 61.0  # the request cap's span, as in engine/limiter.MinuteCap
REDIS_TIMEOUT_S = 0.5  # a Redis slower than this counts as gone: the shard limits itself meanwhile
PROBE_S = 1.0  # while Redis is gone, ask it again this often
ADMIT_BATCH = 64  # most waiting requests offered to Redis in one call
POOL_CONNECTIONS = 8  # a blocking pool: the default one raised MaxConnectionsError under 5000 calls
IDLE_TTL_S = 120.0  # an account nobody used for this long starts afresh (full buckets)
REDIS_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)

# Shared by both scripts: refill the buckets from the stored levels to Redis's own `now`.
_REFILL = """
local function fmt(x) return string.format('%.6f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, tpm, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'req', 'tok', 'stamp', 'paused')
local elapsed = math.max(0, now - (tonumber(s[3]) or now))
local paused = tonumber(s[4]) or 0
local req, tok, req_rate, tok_rate, tok_cap
if rpm > 0 then
  req_rate = rpm / 60
  local cap = math.max(req_rate * burst, 1)
  req = math.min(cap, (tonumber(s[1]) or cap) + elapsed * req_rate)
end
if tpm > 0 then
  tok_rate = tpm / 60
  tok_cap = math.max(tok_rate * burst, 1)
  tok = math.min(tok_cap, (tonumber(s[2]) or tok_cap) + elapsed * tok_rate)
end
"""

# ARGV: rpm, tpm, burst_s, span_s, member prefix, ttl_ms, then the token estimate of each request waiting,
# in arrival order (rpm/tpm 0: no limit). Admits the longest prefix of them that fits now; returns
# {admitted, microseconds until the next one may fit (0 when all were admitted)}.
ACQUIRE = (
    _REFILL
    + """
local span, limit = tonumber(ARGV[4]), math.max(1, math.floor(rpm))
local sent = 0
if req then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now - span))
  sent = redis.call('ZCARD', KEYS[2])
end
local admitted, wait = 0, paused - now
for i = 7, #ARGV do
  if wait > 0 then break end
  local need = tonumber(ARGV[i])
  if req then
    if req < 1 then wait = math.max(wait, (1 - req) / req_rate) end
    if sent >= limit then
      local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
      wait = math.max(wait, tonumber(oldest[2]) + span - now)
    end
  end
  -- a take larger than the bucket waits for a full bucket and leaves it in debt, as in-process
  if tok and tok < math.min(need, tok_cap) then
    wait = math.max(wait, (math.min(need, tok_cap) - tok) / tok_rate)
  end
  if wait <= 0 then
    admitted = admitted + 1
    if req then
      req = req - 1
      sent = sent + 1
      redis.call('ZADD', KEYS[2], fmt(now), ARGV[5] .. admitted)
    end
    if tok then tok = tok - need end
  end
end
if admitted > 0 then
  local fields = {'stamp', fmt(now)}
  if req then
    table.insert(fields, 'req'); table.insert(fields, fmt(req))
    redis.call('PEXPIRE', KEYS[2], ARGV[6])
  end
  if tok then table.insert(fields, 'tok'); table.insert(fields, fmt(tok)) end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
return {admitted, math.ceil(math.max(wait, 0) * 1e6)}
"""
)

# ARGV: rpm, tpm, burst_s, token refund (negative: a charge), remaining requests, remaining tokens
# ('' when the server sent none), drain (1/0), pause seconds, ttl_ms.
FEEDBACK = (
    _REFILL
    + """
local fields = {'stamp', fmt(now)}
local left_req, left_tok, drain = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'
if req then
  if left_req then req = math.min(req, left_req) end
  if drain then req = math.min(req, 0) end
  table.insert(fields, 'req'); table.insert(fields, fmt(req))
end
if tok then
  tok = math.min(tok_cap, tok + tonumber(ARGV[4]))
  if left_tok then tok = math.min(tok, left_tok) end
  if drain then tok = math.min(tok, 0) end
  table.insert(fields, 'tok'); table.insert(fields, fmt(tok))
end
local pause = tonumber(ARGV[8])
if pause > 0 and now + pause > paused then
  paused = now + pause
  table.insert(fields, 'paused'); table.insert(fields, fmt(paused))
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[9]), math.ceil((paused - now) * 1000)))
return 0
"""
)

# ARGV: rpm, tpm, span_s, ttl_ms, then (age seconds, member) pairs: this process's requests of the last
# span, counted again (ZADD of a member already there only moves it). Returns the limits declared by the
# process that joined before, so a spec that disagrees hears of it.
JOIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local before = redis.call('HMGET', KEYS[1], 'rpm', 'tpm')
redis.call('HSET', KEYS[1], 'rpm', ARGV[1], 'tpm', ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
local span = tonumber(ARGV[3])
for i = 5, #ARGV, 2 do
  local age = tonumber(ARGV[i])
  if age < span then redis.call('ZADD', KEYS[2], string.format('%.6f', now - age), ARGV[i + 1]) end
end
if #ARGV >= 5 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
return before
"""


def concurrency_share(total: int, shard: tuple[int, int]) -> int:
    """Shard I's part of `total` requests in flight: the N parts add up to the total (at least 1 each)."""
    index, count = shard
    return max(1, total // count + (1 if index < total % count else 0))


def redacted(url: str) -> str:
    """The URL without a password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or parts.path or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path if parts.hostname else ''}"


class SharedLimiter(Limiter):
    """engine.limiter.Limiter with its buckets, cap and pause in Redis; its own buckets (at 1/N of the
    limits) take over whenever Redis does not answer. Feedback after each request (token refunds, server
    headers, 429 pauses) reaches Redis in one script call per event-loop turn."""

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        max_concurrency: int = 8,
        *,
        url: str,
        account: str,
        shard: tuple[int, int] = (0, 1),
        log: Callable[[str], None] | None = None,
        burst_s: float = BURST_S,
        span_s: float = MINUTE_SPAN_S,
        **kwargs: Any,
    ):
        count = shard[1]
        super().__init__(
            rpm / count if rpm else None,  # the fallback: 1/N of the account each
            tpm / count if tpm else None,
            concurrency_share(max_concurrency, shard),
            burst_s=burst_s,
            **kwargs,
        )
        if self.minute:
            self.minute.span_s = span_s
        self.rpm, self.tpm, self.burst_s, self.span_s = rpm or 0, tpm or 0, burst_s, span_s
        self.shard = shard
        self.where = redacted(url)
        self.keys = [f"{KEY_PREFIX}{{{account}}}", f"{KEY_PREFIX}{{{account}}}:sent"]
        try:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                url,
                max_connections=POOL_CONNECTIONS,
                timeout=REDIS_TIMEOUT_S,
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
            )
        except ValueError as exc:
            hint = "set [run] limiter (or $ENGINE_REDIS_URL) to redis://HOST:PORT/DB"
            raise SpecError(f"limiter URL {self.where!r}: {exc}; {hint}") from None
        self._redis = redis.asyncio.Redis.from_pool(pool)
        self._acquire = self._redis.register_script(ACQUIRE)
        self._feedback = self._redis.register_script(FEEDBACK)
        self._join_script = self._redis.register_script(JOIN)
        self._log = log or (lambda message: None)
        self.shared = True  # False while Redis does not answer
        self._joined = False
        self._checked_limits = False
        self._queue: deque[tuple[int, asyncio.Future]] = deque()  # requests waiting for Redis, in order
        self._admitter: asyncio.Task | None = None
        self._sent: deque[tuple[float, str]] = deque()  # this process's requests: (monotonic, member)
        self._member = f"{secrets.token_hex(6)}:"
        self._serial = itertools.count()
        self._pending: dict[str, Any] | None = None  # feedback not yet sent
        self._tasks: set[asyncio.Task] = set()
        self._probe: asyncio.Task | None = None
        self.calls = 0  # script calls and their total seconds: the limiter's cost
        self.call_s = 0.0
        self.fallbacks = 0
        self.rejoins = 0

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> SharedLimiter:
        return cls(config.rpm, config.tpm, config.max_concurrency, **kwargs)

    # ---- admission --------------------------------------------------------------------------------
    async def _admit(self, estimated_tokens: int) -> None:
        if self.shared:
            admitted = asyncio.get_running_loop().create_future()
            self._queue.append((estimated_tokens, admitted))
            if self._admitter is None or self._admitter.done():
                self._admitter = asyncio.get_running_loop().create_task(self._admit_queue())
            if await admitted:
                return
        await super()._admit(estimated_tokens)  # Redis is gone: the in-process buckets at 1/N
        self._note_sent(self._new_member())
        if self.shared:  # rejoined while this one waited: count it in Redis before the next admission
            self._joined = False

    async def _admit_queue(self) -> None:
        """Admit waiting requests in arrival order, as many per script call as fit: a slow Redis costs
        latency, not throughput."""
        queue = self._queue
        try:
            while queue and self.shared:
                while queue and queue[0][1].done():  # cancelled while waiting
                    queue.popleft()
                batch = list(itertools.islice(queue, ADMIT_BATCH))
                if not batch:
                    break
                prefix = f"{self._new_member()}:"
                args = [self.rpm, self.tpm, self.burst_s, self.span_s, prefix, self._ttl_ms()]
                try:
                    if not self._joined:
                        await self._join()
                    admitted, wait_us = await self._call(self._acquire, args + [t for t, _ in batch])
                except REDIS_ERRORS as exc:
                    self._fall_back(exc)
                    break
                for n in range(1, admitted + 1):
                    _, future = queue.popleft()
                    self._note_sent(f"{prefix}{n}")
                    if not future.done():
                        future.set_result(True)
                if wait_us:
                    await asyncio.sleep(wait_us / 1e6)
        finally:
            while queue and not self.shared:  # Redis is gone: the in-process buckets take over
                _, future = queue.popleft()
                if not future.done():
                    future.set_result(False)

    def _new_member(self) -> str:
        return f"{self._member}{next(self._serial)}"

    def _note_sent(self, member: str) -> None:
        now = time.monotonic()
        self._sent.append((now, member))
        while self._sent and self._sent[0][0] <= now - self.span_s:
            self._sent.popleft()

    async def _join(self) -> None:
        """Declare our limits and count this process's requests of the last span (again: a restarted
        Redis has lost them; one that was only unreachable just moves them)."""
        now = time.monotonic()
        recent = [(now - sent, member) for sent, member in self._sent if now - sent < self.span_s]
        args: list[Any] = [self.rpm, self.tpm, self.span_s, self._ttl_ms()]
        if self.rpm:  # the request cap's log; at most the cap's worth
            for age, member in recent[-max(1, int(self.rpm)) :]:
                args += [f"{age:.6f}", member]
        before = await self._call(self._join_script, args)
        if not self._checked_limits:
            self._checked_limits = True
            self._warn_if_limits_differ(before)
        self._joined = True

    def _warn_if_limits_differ(self, before: list[Any]) -> None:
        declared = [float(v) if v is not None else None for v in before]
        if declared[0] is None or declared == [float(self.rpm), float(self.tpm)]:
            return
        theirs = f"rpm {declared[0]:g}, tpm {declared[1] or 0:g}"
        self._log(
            f"[yellow]shared limiter: another process on this account declared {theirs}; this spec says "
            f"rpm {self.rpm:g}, tpm {self.tpm:g}. Give every spec on one account the same limits."
        )

    async def _call(self, script: Any, args: Any) -> Any:
        start = time.perf_counter()
        try:
            return await script(keys=self.keys, args=list(args))
        finally:
            self.calls += 1
            self.call_s += time.perf_counter() - start

    def _ttl_ms(self) -> int:
        return int(max(IDLE_TTL_S, 2 * self.span_s) * 1000)

    # ---- Redis gone, Redis back -------------------------------------------------------------------
    def _fall_back(self, exc: BaseException) -> None:
        if not self.shared:
            return
        self.shared = False
        self._joined = False  # rejoining re-sends this process's requests of the last span
        self.fallbacks += 1
        # Start from empty buckets (the shared budget was just in use) and a request cap that already
        # counts this process's own requests of the last span.
        for bucket in (self.requests, self.tokens):
            if bucket:
                bucket.drain()
        if self.minute:
            self.minute.seed([sent for sent, _ in self._sent])
        index, count = self.shard
        limits = ", ".join(
            f"{name} {value / count:g}" for name, value in (("rpm", self.rpm), ("tpm", self.tpm)) if value
        )
        reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":").replace("[", "\\[")  # not markup
        self._log(
            f"[yellow]shared limiter: Redis at {self.where} does not answer ({reason}); shard {index + 1}/"
            f"{count} keeps to 1/{count} of the account ({limits or 'no rpm/tpm'}) until it does"
        )
        self._probe = asyncio.get_running_loop().create_task(self._rejoin())

    async def _rejoin(self) -> None:
        while True:
            await asyncio.sleep(PROBE_S)
            try:
                await self._join()  # counts again this process's requests of the last span
            except REDIS_ERRORS:
                continue
            self.shared = True
            self.rejoins += 1
            index, count = self.shard
            back = f"Redis at {self.where} answers again; shard {index + 1}/{count} rejoins"
            self._log(f"shared limiter: {back}")
            if (left := self.paused_until - time.monotonic()) > 0:
                self._share(pause=left)
            self._probe = None
            return

    # ---- feedback, mirrored to Redis --------------------------------------------------------------
    def pause(self, seconds: float) -> None:
        super().pause(seconds)
        self._share(pause=seconds)

    def _refund_tokens(self, amount: float) -> None:
        super()._refund_tokens(amount)
        if self.tpm:
            self._share(refund=amount)

    def _clamp(self, kind: str, remaining: float) -> None:
        super()._clamp(kind, remaining)
        limit = self.rpm if kind == "requests" else self.tpm
        # a shared bucket never holds more than its burst: a larger `remaining` changes nothing
        if limit and remaining < max(limit / 60 * self.burst_s, 1):
            self._share(**{kind: remaining})

    def _drain(self) -> None:
        super()._drain()
        self._share(drain=True)

    def _share(self, **change: Any) -> None:
        """Merge a change into the feedback sent at the next turn of the event loop: before the next
        admission, and in one call for every answer of the same turn."""
        if not self.shared:
            return
        if self._pending is None:
            try:
                task = asyncio.get_running_loop().create_task(self._flush())
            except RuntimeError:  # no event loop: nothing is in flight, nothing to tell
                return
            self._pending = {"refund": 0.0, "requests": None, "tokens": None, "drain": False, "pause": 0.0}
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        pending = self._pending
        pending["refund"] += change.get("refund", 0.0)
        for kind in ("requests", "tokens"):
            if change.get(kind) is not None:
                old = pending[kind]
                pending[kind] = change[kind] if old is None else min(old, change[kind])
        pending["drain"] = pending["drain"] or change.get("drain", False)
        pending["pause"] = max(pending["pause"], change.get("pause", 0.0))

    async def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None or not self.shared:
            return
        left = ["" if pending[kind] is None else pending[kind] for kind in ("requests", "tokens")]
        args = (self.rpm, self.tpm, self.burst_s, pending["refund"], *left, int(pending["drain"]))
        try:
            await self._call(self._feedback, (*args, pending["pause"], self._ttl_ms()))
        except REDIS_ERRORS as exc:
            self._fall_back(exc)

    async def aclose(self) -> None:
        for task in (self._probe, self._admitter):
            if task is not None:
                task.cancel()
        if self._tasks:  # the last feedback (a pause) still matters to the other shards
            await asyncio.wait(set(self._tasks), timeout=2 * REDIS_TIMEOUT_S)
            for task in self._tasks:
                task.cancel()
        await self._redis.aclose()
