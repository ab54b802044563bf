"""SIGINT / SIGTERM during `engine run`: the first asks the pipeline to stop (on its event loop); a second
exits at once with 128 + its number, leaving what a SIGKILL leaves (the journal is whole line by line, so
the same command resumes). Plain `signal.signal` handlers, so the second signal works even while the
loop is busy in synchronous code."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# GNU `timeout` and some supervisors deliver one signal twice (to the process, then to its group),
# microseconds apart: a repeat this soon is the same request, not an impatient second one.
SAME_SIGNAL_S = 0.2


class SignalStop:
    """A context manager that installs the handlers (main thread only) and restores the previous ones."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_first: Callable[[int], None], *, enabled: bool = True
    ):
        self.loop = loop
        self.on_first = on_first
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: list[tuple[int, float]] = []  # (signal, when)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalStop:
        if self.enabled:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if not self.received:
            self.received.append((signum, now))
            self.loop.call_soon_threadsafe(self.on_first, signum)
            return
        if now - self.received[0][1] < SAME_SIGNAL_S:
            return
        self.received.append((signum, now))
        name = signal.Signals(signum).name
        message = (
            f"\n{name} again: exiting now; requests in flight are dropped and their items stay pending. "
            "Run the same command to resume.\n"
        )
        if sys.stderr.isatty():
            message = "\x1b[?25h" + message  # show the cursor the progress bar hid
        os.write(2, message.encode())  # not print(): the interrupted code may be inside sys.stderr
        os._exit(128 + signum)
