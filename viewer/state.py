"""What the pages share: the folder searched for runs, the record indexes, the comparers, and the
lookups that turn URL parameters into runs and stages (anything else is a NotFound)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from viewer import runs
from viewer.compare import choose, load_comparers
from viewer.records import IndexCache, LineIndex


class NotFound(Exception):
    """A run, stage or record the URL names does not exist; the message says what to do."""


class State:
    RESCAN_S = 2.0  # the run list is re-read at most this often (a run may start while we serve)
    compare_wait_s = 2.0  # a comparison not ready by then shows its progress instead

    def __init__(self, root: Path):
        self.shown_root = root  # as the user wrote it
        self.root = root.resolve()
        self.indexes = IndexCache()
        self.comparers = load_comparers()
        self._runs: list[runs.RunRef] = []
        self._scanned = 0.0
        self._lock = threading.Lock()
        self.lock = threading.Lock()  # guards `cache`
        self.cache: dict[Any, Any] = {}  # derived results (plots, comparisons), keyed by their inputs

    def runs(self) -> list[runs.RunRef]:
        with self._lock:
            if time.monotonic() - self._scanned > self.RESCAN_S:
                self._runs = runs.find(self.root)
                self._scanned = time.monotonic()
            return self._runs

    def run(self, key: str) -> runs.RunRef:
        for ref in self.runs():
            if ref.key == key:
                return ref
        raise NotFound(f"no run {key!r} under {self.root}; pick one on the runs page")

    def stage(self, ref: runs.RunRef, stage: str | None) -> str:
        """The named stage of the run (default: its last), checked against its manifest."""
        if not ref.stages:
            raise NotFound(f"run {ref.name!r} has no stages yet")
        if not stage:
            return ref.stages[-1]
        if stage not in ref.stages:
            raise NotFound(f"run {ref.name!r} has no stage {stage!r} (stages: {', '.join(ref.stages)})")
        return stage

    def index(self, ref: runs.RunRef, stage: str) -> LineIndex:
        return self.indexes.stage(ref.stage_dir(stage))

    def comparer(self, index: LineIndex) -> Any:
        """The comparer for a stage's records, chosen on its first kept record."""
        kept = index.select("kept")
        return choose(self.comparers, index.read(kept[0]) if kept else None)


def int_param(value: str | None, default: int = 0) -> int:
    """A page number or index from the URL; anything else is the default."""
    try:
        return max(int(value), 0) if value is not None else default
    except ValueError:
        return default
