"""A progress bar per stage: done/total, requests and tokens per minute, 429s, retries, ETA, cost."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class StageProgress:
    def __init__(self, enabled: bool = True):
        self.console = Console(stderr=True)
        self.enabled = enabled and sys.stderr.isatty()
        self.progress: Progress | None = None
        self.task: Any = None
        self.started = time.monotonic()

    def start(self, stage: str, total: int | None) -> None:
        self.started = time.monotonic()
        if not self.enabled:
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

    def update(self, done: int, stats: dict[str, Any]) -> None:
        if not self.progress:
            return
        minutes = max((time.monotonic() - self.started) / 60, 1e-9)
        tokens = stats.get("prompt_tokens", 0) + stats.get("completion_tokens", 0)
        info = f"{stats.get('requests', 0) / minutes:.0f} req/min {tokens / minutes:.0f} tok/min"
        info += f" 429s {stats.get('rate_limited', 0)} retries {stats.get('retries', 0)}"
        if stats.get("cost"):
            info += f" ${stats['cost']:.4f}"
        self.progress.update(self.task, completed=done, info=info)

    def stop(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False)
