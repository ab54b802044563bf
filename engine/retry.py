"""Which provider errors are retried, how long to wait, and when to give up on the whole run.

- RateLimited (429): retried. The server asked us to slow down, so wait what Retry-After says (plus
  up to 10% jitter so clients do not return together), else jittered exponential backoff. The limiter
  pauses and shrinks its window at the same time, so retries do not hammer a throttled endpoint.
- Transient (5xx, timeouts, dropped connections, malformed bodies): retried with exponential backoff
  and full jitter; these usually clear up within seconds.
- Fatal (400/401/403/404, context length, quota): never retried; the same request would fail the same
  way. `stop_run` ones stop the run; others fail only their record.
- BadOutput is not a request failure: the pipeline re-samples it within its own budget.

CircuitBreaker: `threshold` consecutive failed requests (across records) pause everything for
`pause_s`; if they keep failing after the pause, the run stops with RunStopped. One success resets it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

from engine.errors import ProviderError, RateLimited, RunStopped, Transient

BACKOFF_BASE_S = 1.0  # first retry waits up to this (full jitter), doubling each attempt
BACKOFF_MAX_S = 60.0
BREAKER_THRESHOLD = 25  # above a full window of concurrent requests failing together in one blip
BREAKER_PAUSE_S = 30.0


class BackoffWait:
    """tenacity wait: Retry-After (+jitter) for 429s that carry it, else exponential backoff with jitter."""

    def __init__(self, base_s: float = BACKOFF_BASE_S, max_s: float = BACKOFF_MAX_S):
        self._exponential = wait_random_exponential(multiplier=base_s, max=max_s)
        self.max_s = max_s

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return min(exc.retry_after * (1.0 + 0.1 * random.random()), self.max_s)
        return self._exponential(state)


def retry_policy(
    max_retries: int,
    *,
    base_s: float = BACKOFF_BASE_S,
    max_s: float = BACKOFF_MAX_S,
    before_sleep: Callable[[RetryCallState], Any] | None = None,
) -> AsyncRetrying:
    """`async for attempt in retry_policy(n): with attempt: ...`; the last error is re-raised as is."""
    return AsyncRetrying(
        retry=retry_if_exception_type((RateLimited, Transient)),
        stop=stop_after_attempt(max_retries + 1),
        wait=BackoffWait(base_s, max_s),
        before_sleep=before_sleep,
        reraise=True,
    )


class CircuitBreaker:
    def __init__(self, threshold: int = BREAKER_THRESHOLD, pause_s: float = BREAKER_PAUSE_S, where: str = ""):
        self.threshold = threshold
        self.pause_s = pause_s
        self.where = where
        self.consecutive = 0
        self.tripped = 0  # pauses taken since the last success
        self.paused_until = 0.0
        self.stopped: str | None = None
        self.last_error = ""

    async def wait(self) -> None:
        """Before each request: sleep out a pause, or raise RunStopped once the breaker has stopped."""
        while True:
            if self.stopped:
                raise RunStopped(self.stopped)
            wait = self.paused_until - time.monotonic()
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    def success(self) -> None:
        self.consecutive = 0
        self.tripped = 0

    def failure(self, exc: ProviderError) -> str | None:
        """Count a failed request; returns "pause" or "stop" when this failure changes the state."""
        if time.monotonic() < self.paused_until:
            return None  # requests sent before the pause finishing badly say nothing new
        self.consecutive += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.consecutive < self.threshold or self.stopped:
            return None
        self.consecutive = 0
        if self.tripped:
            self.stopped = (
                f"{self.where}: {self.threshold} consecutive requests failed again after a "
                f"{self.pause_s:g} s pause (last: {self.last_error}); stopping the run. "
                "Fix the endpoint, then run the same command again to resume."
            )
            return "stop"
        self.tripped += 1
        self.paused_until = time.monotonic() + self.pause_s
        return "pause"
