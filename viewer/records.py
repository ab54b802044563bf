"""Where every outcome line of a stage starts: a lazily built byte-offset index over its derived files
(kept / rejected / failed), so paging, filtering and search read only the lines a page shows.

Lines are parsed by engine/jsonl.py when the index is built; afterwards a record is read back
by seeking to its offset. Text search runs a byte pattern over the memory-mapped files, never loading
a stage whole. An index is rebuilt when a file's size or modification time changes (a new run or a
filter replay rewrites them).
"""

from __future__ import annotations

import mmap
import threading
from bisect import bisect_right
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from engine.errors import SpecError
from engine.jsonl import jsonl_lines
from engine.store import OUTCOMES, stage_files


@dataclass(frozen=True, slots=True)
class Row:
    """One outcome line: where it is and what the list filters on."""

    outcome: str  # kept | rejected | failed (or "input" for an input file)
    file: int  # index into LineIndex.files
    offset: int
    id: str
    reason: str  # rejected: "filter: reason class"; failed: the error class; else ""


class LineIndex:
    """Rows of one or more JSONL files, in file order; `select` filters, `read` loads one record."""

    def __init__(self, sources: Iterable[tuple[str, Path]]):
        self.files: list[Path] = []
        self.rows: list[Row] = []
        self.by_id: dict[str, list[int]] = {}
        self.counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()  # rejected, "filter: reason class"
        self.errors: Counter[str] = Counter()  # failed, error class
        self.usage: Counter[str] = Counter()  # prompt/completion tokens, latency, over records with meta
        self._starts: list[list[int]] = []  # per file: line start offsets of its rows
        self._first_row: list[int] = []  # per file: position of its first row in `rows`
        self._selections: OrderedDict[tuple[str, str, str], list[int]] = OrderedDict()
        self._lock = threading.Lock()
        sources = list(sources)
        self.signature = signature([path for _, path in sources])  # before reading: a rewrite shows
        for outcome, path in sources:
            self._add_file(outcome, path)

    def _add_file(self, outcome: str, path: Path) -> None:
        number = len(self.files)
        self.files.append(path)
        self._first_row.append(len(self.rows))
        starts: list[int] = []
        reasons: dict[str, str] = {}  # one string object per distinct reason
        with open(path, "rb") as f:
            for line_no, offset, _, record in jsonl_lines(f, path):
                rid = str(record.get("id", f"{path.name}:{line_no}"))
                reason = _reason_class(outcome, record)
                reason = reasons.setdefault(reason, reason)
                self.by_id.setdefault(rid, []).append(len(self.rows))
                self.rows.append(Row(outcome, number, offset, rid, reason))
                starts.append(offset)
                self.counts[outcome] += 1
                if outcome == "rejected":
                    self.reasons[reason] += 1
                elif outcome == "failed":
                    self.errors[reason] += 1
                self._add_usage(record)
        self._starts.append(starts)

    def _add_usage(self, record: dict[str, Any]) -> None:
        meta = record.get("meta") or (record.get("record") or {}).get("meta")
        if not isinstance(meta, dict):
            return
        usage = meta.get("usage") or {}
        for key in ("prompt_tokens", "completion_tokens"):
            if isinstance(usage.get(key), int):
                self.usage[key] += usage[key]
        if isinstance(meta.get("latency_s"), int | float):
            self.usage["latency_s"] += meta["latency_s"]
            self.usage["answers"] += 1

    # ---- reading ----------------------------------------------------------------------------
    def read(self, position: int) -> dict[str, Any]:
        return next(self.read_many([position]))

    def read_many(self, positions: Iterable[int]) -> Iterator[dict[str, Any]]:
        """Records at these positions, in the order given, each file opened once."""
        handles: dict[int, Any] = {}
        try:
            for position in positions:
                row = self.rows[position]
                if row.file not in handles:
                    try:
                        handles[row.file] = open(self.files[row.file], "rb")
                    except FileNotFoundError:  # a replay merged the shards meanwhile
                        raise SpecError(f"{self.files[row.file]} was removed while reading; reload") from None
                handle = handles[row.file]
                handle.seek(row.offset)
                yield self._parse(handle.readline(), row)
        finally:
            for handle in handles.values():
                handle.close()

    def _parse(self, line: bytes, row: Row) -> dict[str, Any]:
        """The record of a line, checked against the index: a file rewritten since is an error."""
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or str(record.get("id", row.id)) != row.id:
            path = self.files[row.file]
            raise SpecError(f"{path} changed while it was being read (a run or replay is writing it); reload")
        return record

    def find(self, rid: str, outcome: str | None = None) -> list[int]:
        """Positions of the rows with this id (several with samples > 1), optionally of one outcome."""
        return [p for p in self.by_id.get(rid, []) if outcome is None or self.rows[p].outcome == outcome]

    # ---- the record list ------------------------------------------------------------------------
    def select(self, outcome: str = "", reason: str = "", query: str = "") -> list[int]:
        """Positions matching an outcome, a reason and a query (an id substring, or text anywhere in
        the record's line); the last few selections are cached, so paging costs only the page."""
        key = (outcome, reason, query)
        with self._lock:
            if key in self._selections:
                self._selections.move_to_end(key)
                return self._selections[key]
        rows = self.rows
        positions: Iterable[int] = range(len(rows))
        if outcome:
            positions = [p for p in positions if rows[p].outcome == outcome]
        if reason:
            positions = [p for p in positions if rows[p].reason == reason]
        if query:
            hits = self._text_hits(query, outcome)
            hits |= {p for p in positions if query.lower() in rows[p].id.lower()}
            positions = [p for p in positions if p in hits]
        selected = list(positions)
        with self._lock:
            self._selections[key] = selected
            while len(self._selections) > 16:
                self._selections.popitem(last=False)
        return selected

    def _text_hits(self, query: str, outcome: str = "") -> set[int]:
        """Rows (of one outcome's files, if given) whose JSON line holds the query as it is written
        there (strings are stored UTF-8 with JSON escapes). Latin letters match as typed, in lower
        case, upper case or capitalised: a few literal scans are ~5x faster than one without case."""
        variants = {query, query.lower(), query.upper(), query.capitalize()}
        needles = [orjson.dumps(v)[1:-1] for v in sorted(variants)]
        hits: set[int] = set()
        for number, path in enumerate(self.files):
            starts = self._starts[number]
            if not starts or (outcome and self.rows[self._first_row[number]].outcome != outcome):
                continue
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                for needle in needles:
                    found = data.find(needle)
                    while found >= 0:
                        line = bisect_right(starts, found) - 1
                        hits.add(self._first_row[number] + line)
                        if line + 1 >= len(starts):
                            break
                        found = data.find(needle, starts[line + 1])  # one hit per line is enough
        return hits


def _reason_class(outcome: str, record: dict[str, Any]) -> str:
    """The class the list filters on, as `engine status` counts it: `filter: text before the colon`."""
    if outcome == "rejected":
        return f"{record.get('filter', '?')}: {str(record.get('reason', '')).split(':')[0]}"
    if outcome == "failed":
        return str(record.get("error") or "failed")
    return ""


def signature(files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    """What changes when a file is rewritten: its size and modification time."""
    out = []
    for path in files:
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        out.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(out)


def stage_sources(stage_dir: Path) -> list[tuple[str, Path]]:
    return [(outcome, path) for outcome in OUTCOMES for path in stage_files(stage_dir, outcome)]


class IndexCache:
    """Indexes by their files, rebuilt when a file changes; thread-safe (built in worker threads)."""

    def __init__(self, size: int = 8):
        self.size = size
        self._items: OrderedDict[tuple[str, ...], LineIndex] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sources: list[tuple[str, Path]]) -> LineIndex:
        key = tuple(f"{outcome}:{path}" for outcome, path in sources)
        current = signature([path for _, path in sources])
        with self._lock:
            index = self._items.get(key)
            if index is not None and index.signature == current:
                self._items.move_to_end(key)
                return index
            index = LineIndex(sources)
            self._items[key] = index
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return index

    def stage(self, stage_dir: Path) -> LineIndex:
        return self.get(stage_sources(stage_dir))
