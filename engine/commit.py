"""Turning journal entries into outcomes: the filter chain, in input order, one outcome per key.

`RoundCommit` holds a round's keys in input order and commits the head of the queue as soon as it
has an outcome; `Committer` runs the chain on an answer and writes kept / rejected / failed.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.derived import DerivedWriter
from engine.journal import Journal
from engine.types import Record
from filters.base import Filter


@dataclass
class StageReport:
    name: str
    counts: Counter = field(default_factory=Counter)  # kept / rejected / failed / pending
    reasons: Counter = field(default_factory=Counter)  # "filter: reason class" -> n
    filter_stats: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # the generator's figures over kept records
    notes: list[str] = field(default_factory=list)  # e.g. outcomes a stopped run has not filtered yet
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": {k: self.counts.get(k, 0) for k in ("kept", "rejected", "failed", "pending")},
            "reasons": dict(self.reasons.most_common()),
            "filters": self.filter_stats,
            "stats": self.stats,
            **({"unfiltered": self.counts["unfiltered"]} if self.counts.get("unfiltered") else {}),
            **({"notes": self.notes} if self.notes else {}),
            "seconds": round(self.seconds, 3),
        }


class Committer:
    """Applies a stage's chain to each outcome and writes it to the derived files of the shard whose
    journal holds it (no writer: the chain only, for the kept records a feedback generator needs)."""

    def __init__(
        self, chain: list[Filter], writer: DerivedWriter | None, report: StageReport, journal: Journal
    ):
        self.chain = chain
        self.writer = writer
        self.report = report
        self.journal = journal

    def __call__(self, entry: dict[str, Any], kept_round: list[Record]) -> None:
        report, key = self.report, entry["key"]
        status = entry["status"]
        if status == "ok":
            record = orjson.loads(orjson.dumps(entry["record"]))  # the chain owns its copy
            for f in self.chain:
                verdict = f(record)
                if verdict is True or (isinstance(verdict, tuple) and verdict[0]):
                    continue
                reason = verdict[1] if isinstance(verdict, tuple) else "dropped"
                report.counts["rejected"] += 1
                report.reasons[f"{f.name}: {reason.split(':')[0]}"] += 1
                rejected = {
                    "id": entry["id"],
                    "key": key,
                    "filter": f.name,
                    "reason": reason,
                    "record": record,
                }
                self._write("rejected", key, rejected)
                return
            if isinstance(record.get("meta"), dict):
                record["meta"]["key"] = key  # so a commit can tell which kept record is which
            report.counts["kept"] += 1
            kept_round.append(record)
            self._write("kept", key, record)
        elif status == "rejected":
            report.counts["rejected"] += 1
            report.reasons[f"{entry['filter']}: {entry['reason'].split(':')[0]}"] += 1
            self._write("rejected", key, {k: v for k, v in entry.items() if k != "status"})
        else:
            report.counts["failed"] += 1
            self._write("failed", key, {k: v for k, v in entry.items() if k != "status"})

    def _write(self, outcome: str, key: str, record: dict[str, Any]) -> None:
        if self.writer is not None:
            shard = self.journal.shard(key)
            assert shard is not None, "an outcome is committed only once journaled"
            self.writer.write(shard, outcome, key, record)


class RoundCommit:
    """Commits a round's outcomes in input order as soon as the head of the queue has one; a key that
    ends without an outcome (the run stopped) is counted pending and never holds the others back."""

    def __init__(self, journal: Journal, commit: Any, *, keep_records: bool):
        self.journal = journal
        self.commit = commit  # (entry, kept list) -> None
        self.order: deque[str] = deque()  # keys not yet committed, in input order
        self.fresh: dict[str, dict[str, Any]] = {}  # outcomes of this invocation, until committed
        self.redoing: set[str] = set()  # failed keys asked again: their old outcome waits for the new one
        self.kept: list[Record] = []
        self.keep_records = keep_records
        self.done = 0
        self.pending = 0

    def _ready(self, key: str, final: bool) -> bool:
        return key in self.fresh or (key in self.journal and (final or key not in self.redoing))

    def advance(self, *, final: bool = False) -> int:
        """Commit from the head; `final` (nothing is in flight any more) also passes keys left without
        an outcome, and commits the old outcome of a retried key whose retry never finished."""
        while self.order:
            key = self.order[0]
            if not self._ready(key, final):
                if not final:
                    break
                self.order.popleft()
                self.pending += 1
                continue
            self.order.popleft()
            self.redoing.discard(key)
            entry = self.fresh.pop(key, None) or self.journal.get(key)
            kept: list[Record] = []
            self.commit(entry, kept)
            if self.keep_records:
                self.kept.extend(kept)
            self.done += 1
        return self.done


def count_status(
    report: StageReport,
    key: str,
    journal: Journal,
    derived: dict[str, str],
    kept: list[Record] | None,
) -> None:
    """`status`: what the derived files hold for this key (or that it has none yet)."""
    outcome = derived.get(key) if key in journal else None
    if outcome is None:
        report.counts["unfiltered" if key in journal else "pending"] += 1
    elif outcome in ("kept", "failed"):
        report.counts[outcome] += 1
        if outcome == "kept" and kept is not None:  # a feedback generator's next round needs them
            kept.append(journal.get(key)["record"])
    else:
        report.counts["rejected"] += 1
        report.reasons[outcome] += 1
