"""Two stages' kept records joined by id: every shared id's distance and the per-field totals. One
background job per pair of file versions, so a large comparison shows its progress instead of
holding a request open, and is computed once."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from viewer.compare import GenericComparer, compare_records, distance
from viewer.records import LineIndex


class PairJob:
    def __init__(self, index_a: LineIndex, index_b: LineIndex, comparer: Any):
        self.index_a, self.index_b, self.comparer = index_a, index_b, comparer
        self.first_a = {index_a.rows[p].id: p for p in reversed(index_a.select("kept"))}
        self.first_b = {index_b.rows[p].id: p for p in reversed(index_b.select("kept"))}
        self.shared_ids = [rid for rid in self.first_a if rid in self.first_b]
        self.only_a = len(self.first_a.keys() - self.first_b.keys())
        self.only_b = len(self.first_b.keys() - self.first_a.keys())
        self.done = 0
        self.shared: list[tuple[str, float]] = []  # (id, distance), in A's order
        self.fields: dict[str, dict[str, Any]] = {}  # field -> kind, summed counts, ids changed
        self.error: BaseException | None = None
        self.finished = threading.Event()

    @property
    def total(self) -> int:
        return len(self.shared_ids)

    def start(self) -> PairJob:
        threading.Thread(target=self._run, name="engine-view-compare", daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            ids = self.shared_ids
            left = self.index_a.read_many(self.first_a[rid] for rid in ids)
            right = self.index_b.read_many(self.first_b[rid] for rid in ids)
            for rid, ra, rb in zip(ids, left, right, strict=True):
                diffs = compare_records(self.comparer, ra, rb)
                self.shared.append((rid, distance(diffs)))
                for field, diff in diffs.items():
                    total = self.fields.setdefault(
                        field, {"kind": diff["kind"], "counts": Counter(), "changed": 0}
                    )
                    total["counts"].update(diff["counts"])
                    total["changed"] += diff["distance"] > 0
                self.done += 1
        except BaseException as exc:  # shown on the page; the server goes on
            self.error = exc
        finally:
            self.finished.set()


def choose_comparer(state: Any, index_a: LineIndex, index_b: LineIndex) -> Any:
    """The task comparer that fits B's records, else A's, else the generic one."""
    comparer = state.comparer(index_b)
    return state.comparer(index_a) if isinstance(comparer, GenericComparer) else comparer


def pair_job(state: Any, index_a: LineIndex, index_b: LineIndex) -> PairJob:
    """The job for these two file versions, started on first use."""
    key = ("pair", index_a.signature, index_b.signature)
    with state.lock:
        job = state.cache.get(key)
        if job is None:
            if len(state.cache) > 32:
                state.cache.clear()
            job = state.cache[key] = PairJob(
                index_a, index_b, choose_comparer(state, index_a, index_b)
            ).start()
    return job
