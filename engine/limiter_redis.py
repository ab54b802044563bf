"""One rate limit for every process on the same provider account, kept in Redis.

With `[run] limiter = "redis://HOST:PORT/DB"` (or $ENGINE_REDIS_URL) the request and token buckets (the
same ~1 s burst as the in-process limiter), the per-61-s request cap and the pause after a 429 live in
Redis, changed only by the small Lua scripts below, which read the time from Redis (`TIME`): the
machines' clocks never matter. A request is booked, not polled for: one script call gives every request
waiting in a process the time it may go, after every booking made before by any process (so the
processes queue in one line, and N processes do not stampede at each refill). The adaptive concurrency
window stays per process, sized max_concurrency / N.

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
ADMIT_BATCH = 64  # most waiting requests booked in one call
POOL_CONNECTIONS = 8  # a blocking pool: the default one raised MaxConnectionsError under 5000 calls
IDLE_TTL_S = 120.0  # an account nobody used for this long starts afresh (full buckets)
REDIS_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)

# Shared by both scripts: the stored bucket levels hold at `stamp`, which is now or the start of the latest
# reservation (in the future while requests are booked ahead); `at` is the later of stamp and Redis's now.
_LEVELS = """
local function fmt(x) return string.format('%.6f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, tpm, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'req', 'tok', 'stamp', 'paused')
local stamp = tonumber(s[3]) or now
local at = math.max(now, stamp)
local paused = tonumber(s[4]) or 0
local req, tok, req_rate, tok_rate, req_cap, tok_cap
if rpm > 0 then
  req_rate = rpm / 60
  req_cap = math.max(req_rate * burst, 1)
  req = tonumber(s[1]) or req_cap
end
if tpm > 0 then
  tok_rate = tpm / 60
  tok_cap = math.max(tok_rate * burst, 1)
  tok = tonumber(s[2]) or tok_cap
end
local function level(value, rate, cap, time) return math.min(cap, value + (time - stamp) * rate) end
"""

# ARGV: rpm, tpm, burst_s, span_s, member prefix, ttl_ms, then the token estimate of each request waiting,
# in arrival order (rpm/tpm 0: no limit). Books every one of them at the earliest time the buckets, the
# request cap and any pause allow, in order after every booking before (of any process), and returns
# {pause left, delay of each request} in microseconds: a request waits its delay, then goes.
ACQUIRE = (
    _LEVELS
    + """
local span, limit = tonumber(ARGV[4]), math.max(1, math.floor(rpm))
local total = 0
if req then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', fmt(now - span))
  total = redis.call('ZCARD', KEYS[2])
end
local start = math.max(at, paused)
local delays = {math.ceil(math.max(paused - now, 0) * 1e6)}
for i = 7, #ARGV do
  local need = tonumber(ARGV[i])
  if req then
    local have = level(req, req_rate, req_cap, start)
    if have < 1 then start = start + (1 - have) / req_rate end
    if total >= limit then  -- the limit-th newest booking must have left the span
      local edge = redis.call('ZRANGE', KEYS[2], total - limit, total - limit, 'WITHSCORES')
      start = math.max(start, tonumber(edge[2]) + span)
    end
  end
  -- a take larger than the bucket waits for a full bucket and leaves it in debt, as in-process
  if tok then
    local want, have = math.min(need, tok_cap), level(tok, tok_rate, tok_cap, start)
    if have < want then start = start + (want - have) / tok_rate end
  end
  if req then
    req = level(req, req_rate, req_cap, start) - 1
    redis.call('ZADD', KEYS[2], fmt(start), ARGV[5] .. (i - 6))
    total = total + 1
  end
  if tok then tok = level(tok, tok_rate, tok_cap, start) - need end
  stamp = start
  table.insert(delays, math.ceil((start - now) * 1e6))
end
local ttl = tonumber(ARGV[6]) + math.ceil((math.max(stamp, paused) - now) * 1000)
local fields = {'stamp', fmt(stamp)}
if req then
  table.insert(fields, 'req'); table.insert(fields, fmt(req))
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if tok then table.insert(fields, 'tok'); table.insert(fields, fmt(tok)) end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ttl)
return delays
"""
)

# ARGV: rpm, tpm, burst_s, token refund (negative: a charge), remaining requests, remaining tokens
# ('' when the server sent none), drain (1/0), pause seconds, ttl_ms. Applied at `at`: while requests are
# booked ahead, to the levels after the last booking.
FEEDBACK = (
    _LEVELS
    + """
local fields = {'stamp', fmt(at)}
local left_req, left_tok, drain = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'
if req then
  req = level(req, req_rate, req_cap, at)
  if left_req then req = math.min(req, left_req) end
  if drain then req = math.min(req, 0) end
  table.insert(fields, 'req'); table.insert(fields, fmt(req))
end
if tok then
  tok = math.min(tok_cap, level(tok, tok_rate, tok_cap, at) + tonumber(ARGV[4]))
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
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[9]) + math.ceil((math.max(at, paused) - now) * 1000))
return 0
"""
)

# ARGV: rpm, tpm, span_s, ttl_ms, then (age seconds, member) pairs: this process's requests of the last
# span, counted again (ZADD of a member already there only moves it; a negative age is a booking ahead).
# Returns the limits declared by the process that joined before, so a spec that disagrees hears of it.
JOIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local before = redis.call('HMGET', KEYS[1], 'rpm', 'tpm')
redis.call('HSET', KEYS[1], 'rpm', ARGV[1], 'tpm', ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
local span = tonumber(ARGV[3])
if #ARGV >= 5 and redis.call('HEXISTS', KEYS[1], 'stamp') == 0 then
  -- a Redis that lost its state while we were sending: start from empty buckets, not a fresh burst
  redis.call('HSET', KEYS[1], 'req', 0, 'tok', 0, 'stamp', string.format('%.6f', now))
end
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
        self._back = asyncio.Event()  # set while shared: wakes the requests waiting on local buckets
        self._back.set()
        self._joined = False
        self._checked_limits = False
        self._queue: deque[tuple[int, asyncio.Future]] = deque()  # requests waiting for Redis, in order
        self._admitter: asyncio.Task | None = None
        self._sent: deque[tuple[float, str]] = deque()  # this process's requests: (monotonic, member)
        self._local_from = 0.0  # after a fall-back: when the in-process buckets take over
        self._local_fresh = False  # ... from empty
        self._member = f"{secrets.token_hex(6)}:"
        self._serial = itertools.count()
        self._pending: dict[str, Any] | None = None  # feedback not yet sent
        self._tasks: set[asyncio.Task] = set()
        self._probe: asyncio.Task | None = None
        self.calls = 0  # script calls and their total seconds: the limiter's cost
        self.call_s = 0.0
        self.fallbacks = 0
        self.rejoins = 0

    # ---- admission --------------------------------------------------------------------------------
    async def _admit(self, estimated_tokens: int) -> None:
        while True:
            if self.shared:
                booked = asyncio.get_running_loop().create_future()
                self._queue.append((estimated_tokens, booked))
                if self._admitter is None or self._admitter.done():
                    self._admitter = asyncio.get_running_loop().create_task(self._book_queue())
                delay = await booked
                if delay is not None:
                    await asyncio.sleep(delay)
                    # a pause that began meanwhile (after our 429, or one Redis told us of) still holds
                    while (wait := self.paused_until - time.monotonic()) > 0:
                        await asyncio.sleep(wait)
                    return
            if await self._admit_locally(estimated_tokens):
                return

    async def _admit_locally(self, estimated_tokens: int) -> bool:
        """The in-process buckets at 1/N while Redis is gone. False when Redis came back first: then
        the request is booked there, so local waiters never add to the shared rate after a rejoin."""
        local = asyncio.ensure_future(self._local_take(estimated_tokens))
        back = asyncio.ensure_future(self._back.wait())
        try:
            done, _ = await asyncio.wait({local, back}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            back.cancel()
            if not local.done():
                local.cancel()
        if local not in done or local.cancelled():
            return False
        local.result()
        self._note_sent(time.monotonic(), self._new_member())
        if self.shared:  # admitted here as Redis came back: count it there before the next booking
            self._joined = False
        return True

    async def _local_take(self, estimated_tokens: int) -> None:
        while (wait := self._local_from - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        if self._local_fresh:
            self._local_fresh = False
            for bucket in (self.requests, self.tokens):
                if bucket:
                    bucket.drain()
        await super()._admit(estimated_tokens)

    async def _book_queue(self) -> None:
        """Book the waiting requests in arrival order, as many per script call as are waiting: each gets
        the time it may go. No polling: a request costs at most one call, however long it waits."""
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
                    pause_us, *delays_us = await self._call(self._acquire, args + [t for t, _ in batch])
                except REDIS_ERRORS as exc:
                    self._fall_back(exc)
                    break
                now = time.monotonic()
                if pause_us:  # another process's 429: our requests booked earlier wait for it too
                    self.paused_until = max(self.paused_until, now + pause_us / 1e6)
                for n, delay_us in enumerate(delays_us, 1):
                    _, booked = queue.popleft()
                    self._note_sent(now + delay_us / 1e6, f"{prefix}{n}")
                    if not booked.done():
                        booked.set_result(delay_us / 1e6)
        finally:
            while queue and not self.shared:  # Redis is gone: the in-process buckets take over
                _, booked = queue.popleft()
                if not booked.done():
                    booked.set_result(None)

    def _new_member(self) -> str:
        return f"{self._member}{next(self._serial)}"

    def _note_sent(self, at: float, member: str) -> None:
        """Remember this process's request going at `at` (booked ahead: in the future), for a fall-back
        and a rejoin."""
        self._sent.append((at, member))
        while self._sent and self._sent[0][0] <= time.monotonic() - self.span_s:
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
        self._back.clear()
        self._joined = False  # rejoining re-sends this process's requests of the last span
        self.fallbacks += 1
        # Requests booked ahead still go at their time; the in-process buckets take over after the last
        # of them, starting empty (the shared budget was just in use), with a request cap that counts
        # this process's requests of the last span.
        self._local_from = max([time.monotonic(), *(sent for sent, _ in self._sent)])
        self._local_fresh = True
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
            self._back.set()  # requests waiting on the in-process buckets are booked in Redis instead
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
