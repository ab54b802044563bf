"""What a run shows while it works, per stage: done/total, requests and tokens per minute, 429s, retries,
the concurrency window, a pause, cost. A live bar on a terminal; otherwise (piped, `tee`d, a log file) a
plain line every `every_s` seconds. Log lines (engine/client_log.py) go through the same console, so
they print above the bar instead of through it."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

PLAIN_EVERY_S = 10.0
CONSOLE = Console(stderr=True, soft_wrap=True)


def setup_logging(level: int = logging.INFO) -> None:
    """Send the `engine` loggers to stderr: through the live console on a terminal, else plain lines."""
    logger = logging.getLogger("engine")
    logger.handlers.clear()
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(console=CONSOLE, show_path=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


class StageProgress:
    def __init__(self, enabled: bool = True, every_s: float = PLAIN_EVERY_S, *, logs: bool = True):
        self.console = CONSOLE
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self.every_s = every_s
        self.logs = logs  # `status` and `filter` print only their table
        self.progress: Progress | None = None
        self.task: Any = None
        self.stage = ""
        self.total: int | None = None
        self.done = 0
        self.stats: dict[str, Any] = {}
        self.started = self._last_line = time.monotonic()

    def start(self, stage: str, total: int | None) -> None:
        self.stage, self.total, self.done, self.stats = stage, total, 0, {}
        self.started = self._last_line = time.monotonic()
        if not self.live:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(stage, total=total, info="")

    def update(self, done: int | None, stats: dict[str, Any]) -> None:
        if done is not None:
            self.done = done
        self.stats = stats
        if self.progress:
            self.progress.update(self.task, completed=self.done, info=self.info())
        elif self.enabled and time.monotonic() - self._last_line >= self.every_s:
            self._last_line = time.monotonic()
            try:
                print(self.line(), file=sys.stderr, flush=True)
            except OSError:  # `run ... 2>&1 | head`: the reader left; the run goes on without lines
                self.enabled = False

    def info(self) -> str:
        """Rates since the stage started, and what slows it down right now."""
        stats = self.stats
        minutes = max((time.monotonic() - self.started) / 60, 1e-9)
        tokens = stats.get("prompt_tokens", 0) + stats.get("completion_tokens", 0)
        info = f"{stats.get('requests', 0) / minutes:.0f} req/min {tokens / minutes:.0f} tok/min"
        info += f" 429s {stats.get('rate_limited', 0)} retries {stats.get('retries', 0)}"
        if "window" in stats:
            info += f" window {stats['window']}/{stats['window_max']}"
        if stats.get("paused_s", 0) >= 0.5:
            info += f" paused {stats['paused_s']:.0f}s"
        if stats.get("cost"):
            info += f" ${stats['cost']:.4f}"
        return info

    def line(self) -> str:
        """One plain progress line, for a stderr that is not a terminal."""
        elapsed = time.monotonic() - self.started
        if self.total:
            left = elapsed / self.done * (self.total - self.done) if self.done else None
            eta = f", eta {_duration(left)}" if left is not None else ""
            head = f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%){eta}"
        else:
            head = f"{self.done} done"
        return f"{self.stage}: {head}, {_duration(elapsed)} elapsed, {self.info()}"

    def stop(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None

    def log(self, message: str, style: str | None = None) -> None:
        """One line on stderr, printed as given: text such as `[run] max_tokens` is not rich markup."""
        if self.logs:
            self.console.print(message, style=style, highlight=False, markup=False)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
