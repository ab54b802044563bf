"""Error classes the engine acts on. Providers translate their own exceptions into these;
retry.py decides what each one means (retry, re-sample, fail the record, stop the run)."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class SpecError(EngineError):
    """A spec or input problem found before any request (one line: file, key path, what to do)."""


class ProviderError(EngineError):
    """A request that did not produce a usable completion."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class RateLimited(ProviderError):
    """429 or an explicit rate-limit answer. `retry_after` in seconds when the server said so."""

    def __init__(self, message: str, *, status: int | None = 429, retry_after: float | None = None):
        super().__init__(message, status=status)
        self.retry_after = retry_after


class Transient(ProviderError):
    """5xx, timeouts, dropped connections, malformed bodies: worth retrying with backoff."""


class Fatal(ProviderError):
    """400/401/403/404, context length, quota: never retried. `stop_run` for errors that
    would fail every record the same way (bad key, unknown model, unreachable endpoint)."""

    def __init__(self, message: str, *, status: int | None = None, stop_run: bool = False):
        super().__init__(message, status=status)
        self.stop_run = stop_run


class BadOutput(EngineError):
    """The model answered, but the generator cannot use the answer; re-sampled within a budget."""

    def __init__(self, message: str, *, raw: str = ""):
        super().__init__(message)
        self.raw = raw


class RunStopped(EngineError):
    """The run must stop cleanly (fatal provider error, circuit breaker, budget)."""


class DiskFull(RunStopped):
    """A journal or output could not be written for lack of space; nothing was left half-written."""


class RunBusy(SpecError):
    """Another process holds the run (or this shard of it): one line naming that process."""


class Halted(EngineError):
    """The run is stopping: this request was never sent, and its item stays pending (no outcome)."""
