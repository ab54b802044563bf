"""Turning journal entries into outcomes: the filter chain, in input order, one outcome per key.

`RoundCommit` holds a round's keys in input order and commits the head of the queue as soon as it
has an outcome; `Committer` runs the chain on an answer and writes kept / rejected / failed.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.store import DerivedWriter, Journal
from engine.types import Record
from filters.base import Filter


@dataclass
class StageReport:
    name: str
    counts: Counter = field(default_factory=Counter)  # kept / rejected / failed / pending
    reasons: Counter = field(default_factory=Counter)  # "filter: reason class" -> n
    filter_stats: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # the generator's figures over kept records
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": {k: self.counts.get(k, 0) for k in ("kept", "rejected", "failed", "pending")},
            "reasons": dict(self.reasons.most_common()),
            "filters": self.filter_stats,
            "stats": self.stats,
            "seconds": round(self.seconds, 3),
        }


class Committer:
    """Applies a stage's chain to each outcome and writes it (no writer: count only, for `status`)."""

    def __init__(self, chain: list[Filter], writer: DerivedWriter | None, report: StageReport):
        self.chain = chain
        self.writer = writer
        self.report = report

    def __call__(
        self,
        entry: dict[str, Any],
        kept_round: list[Record],
    ) -> None:
        chain, writer, report = self.chain, self.writer, self.report
        status = entry["status"]
        if status == "ok":
            record = orjson.loads(orjson.dumps(entry["record"]))  # the chain owns its copy
            for f in chain:
                verdict = f(record)
                if verdict is True or (isinstance(verdict, tuple) and verdict[0]):
                    continue
                reason = verdict[1] if isinstance(verdict, tuple) else "dropped"
                report.counts["rejected"] += 1
                report.reasons[f"{f.name}: {reason.split(':')[0]}"] += 1
                if writer:
                    writer.write(
                        "rejected",
                        {
                            "id": entry["id"],
                            "key": entry["key"],
                            "filter": f.name,
                            "reason": reason,
                            "record": record,
                        },
                    )
                return
            report.counts["kept"] += 1
            kept_round.append(record)
            if writer:
                writer.write("kept", record)
        elif status == "rejected":
            report.counts["rejected"] += 1
            report.reasons[f"{entry['filter']}: {entry['reason'].split(':')[0]}"] += 1
            if writer:
                writer.write("rejected", {k: v for k, v in entry.items() if k != "status"})
        else:
            report.counts["failed"] += 1
            if writer:
                writer.write("failed", {k: v for k, v in entry.items() if k != "status"})


class RoundCommit:
    """Commits a round's outcomes in input order as soon as the head of the queue has one."""

    def __init__(self, journal: Journal, commit: Any, *, keep_records: bool):
        self.journal = journal
        self.commit = commit  # (entry, kept list) -> None
        self.order: deque[str] = deque()  # keys not yet committed, in input order
        self.fresh: dict[str, dict[str, Any]] = {}  # outcomes of this invocation, until committed
        self.redoing: set[str] = set()  # failed keys asked again: their old outcome no longer counts
        self.kept: list[Record] = []
        self.keep_records = keep_records
        self.done = 0

    def _has_outcome(self, key: str) -> bool:
        return key in self.fresh or (key in self.journal and key not in self.redoing)

    def advance(self) -> int:
        while self.order and self._has_outcome(self.order[0]):
            key = self.order.popleft()
            self.redoing.discard(key)
            entry = self.fresh.pop(key, None) or self.journal.get(key)
            kept: list[Record] = []
            self.commit(entry, kept)
            if self.keep_records:
                self.kept.extend(kept)
            self.done += 1
        return self.done
