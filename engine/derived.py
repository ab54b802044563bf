"""kept / rejected / failed: the files derived from a stage's journals, one set per journal.

    <stage>/kept/shard-0000I.jsonl      the outcomes whose winning journal line is in raw/shard-0000I
    <stage>/rejected/shard-0000I.jsonl  (and failed/) alike
    <stage>/state/shard-0000I.json      {"journal_bytes": n}: the journal bytes these files mirror

Whoever writes journal I (the run holding shard I, or an exclusive run / `engine filter` for all)
rewrites only I's derived files, so a run never deletes outcomes it did not derive. A commit keeps
"every key at most once in kept/rejected/failed" true at every instant, even if killed midway:
  1. the new files are written whole to temp files;
  2. the state says "in flux" (journal_bytes null);
  3. from each old file, the records that leave it (moved to another file, or gone) are taken out;
  4. the new files are renamed in (each only adds records already taken out of the others);
  5. the state records the journal bytes mirrored.
A reader finding the state in flux, or behind the journal, knows the files are stale (see `stale`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from engine.atomic import AtomicFile, atomic_output, write_json_atomic
from engine.errors import DiskFull
from engine.journal import SPACE_ERRORS, complete_size, disk_full, shard_name, shard_of
from engine.jsonl import jsonl_lines
from engine.store import OUTCOMES


def state_path(stage_dir: Path, shard: int) -> Path:
    return stage_dir / "state" / shard_name(shard).replace(".jsonl", ".json")


def record_key(outcome: str, record: dict[str, Any]) -> str | None:
    """The work key of a derived record (kept records carry it in `meta.key`)."""
    if outcome == "kept":
        meta = record.get("meta")
        return meta.get("key") if isinstance(meta, dict) else None
    return record.get("key")


class DerivedWriter:
    """Rewrites the derived files of some shards of a stage; `commit()` swaps them in (see above)."""

    def __init__(self, stage_dir: Path, shards: Iterable[int]):
        self.stage_dir = stage_dir
        self.shards = sorted(set(shards))
        self.placed: dict[str, int] = {}  # key -> shard * 3 + outcome: where this commit puts it
        self.counts = {shard: Counter() for shard in self.shards}
        self.files: dict[tuple[int, str], AtomicFile] = {}
        try:
            for shard in self.shards:
                for outcome in OUTCOMES:  # the shard's lock makes this the only writer of its files
                    self.files[shard, outcome] = AtomicFile(self._target(shard, outcome), only_writer=True)
        except OSError as exc:
            self.abort()
            raise _translated(stage_dir, exc) from None

    def _target(self, shard: int, outcome: str) -> Path:
        return self.stage_dir / outcome / shard_name(shard)

    def write(self, shard: int, outcome: str, key: str, record: dict[str, Any]) -> None:
        try:
            self.files[shard, outcome].write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        except OSError as exc:
            self.abort()
            raise _translated(self.stage_dir, exc) from None
        self.placed[key] = shard * 3 + OUTCOMES.index(outcome)
        self.counts[shard][outcome] += 1

    def commit(self, journal_bytes: dict[int, int]) -> None:
        try:
            for f in self.files.values():
                f.finish()
            for shard in self.shards:
                write_json_atomic(state_path(self.stage_dir, shard), {"journal_bytes": None})
            for shard, outcome in self.files:
                self._take_out_leaving(shard, outcome)
            for f in self.files.values():
                f.publish()
            for shard in self.shards:
                state = {"journal_bytes": journal_bytes.get(shard, 0), "counts": dict(self.counts[shard])}
                write_json_atomic(state_path(self.stage_dir, shard), state)
        except OSError as exc:
            self.abort()
            raise _translated(self.stage_dir, exc) from None
        except DiskFull:
            self.abort()
            raise
        self.files.clear()

    def _take_out_leaving(self, shard: int, outcome: str) -> None:
        """Rewrite the old file without the records this commit puts elsewhere (or nowhere)."""
        target, code = self._target(shard, outcome), shard * 3 + OUTCOMES.index(outcome)
        if not target.exists():
            return
        staying: list[bytes] = []
        leaving = 0
        with open(target, "rb") as f:
            for line in jsonl_lines(f):
                if self.placed.get(record_key(outcome, line.record)) == code:
                    staying.append(line.raw)
                else:
                    leaving += 1
        if leaving:
            with atomic_output(target) as f:
                f.writelines(staying)

    def abort(self) -> None:
        for f in self.files.values():
            f.abort()
        self.files.clear()


def stale(stage_dir: Path) -> dict[int, int]:
    """Shards whose derived files do not mirror their whole journal -> journal bytes not mirrored
    (a run of that shard is in progress, or was killed before its commit)."""
    behind = {}
    for raw in sorted((stage_dir / "raw").glob("shard-*.jsonl")):
        shard = shard_of(raw)
        size = complete_size(raw)
        try:
            mirrored = orjson.loads(state_path(stage_dir, shard).read_bytes()).get("journal_bytes")
        except FileNotFoundError:
            derived = any((stage_dir / o / shard_name(shard)).exists() for o in OUTCOMES)
            mirrored = None if derived else 0  # files from before states existed: rewrite them once
        if mirrored != size:
            behind[shard] = size - (mirrored or 0)
    return behind


def lagging(stage_dir: Path, out_dir: Path) -> tuple[list[int], str | None]:
    """(shards lagging behind their journal with nobody writing them, i.e. their run was killed;
    a process writing a lagging shard now, if any)."""
    from engine.lock import writer_of

    crashed, running = [], None
    for shard in sorted(stale(stage_dir)):
        who = writer_of(out_dir, shard)
        if who is None:
            crashed.append(shard)
        running = running or who
    return crashed, running


def stale_note(stage_dir: Path, out_dir: Path, replay: str, answered: int | None = None) -> str | None:
    """One line on answered items not yet in kept/rejected/failed: who is writing them, or what to run
    (`replay`: the `engine filter` command line of this run; None when every shard is up to date)."""
    crashed, running = lagging(stage_dir, out_dir)
    if not (crashed or running or answered):
        return None
    what = f"{answered} answered items are" if answered else "answered items are"
    if not crashed:
        return f"{what} not in kept/rejected/failed yet: {running or 'a run'} is writing them"
    return (
        f"{what} not in kept/rejected/failed yet (the run of shard {', '.join(str(s + 1) for s in crashed)} "
        f"stopped before writing them): `{replay}` writes them without requests"
    )


def derived_outcomes(stage_dir: Path) -> dict[str, str]:
    """key -> "kept" | "failed" | the rejecting "filter: reason" of every derived record (for `status`)."""
    from engine.store import read_outcome

    found: dict[str, str] = {}
    reasons: dict[str, str] = {}  # one string per distinct reason: memory stays one entry per key
    for outcome in OUTCOMES:
        for record in read_outcome(stage_dir, outcome):
            key = record_key(outcome, record)
            if key is None:
                continue
            if outcome == "rejected":
                reason = f"{record.get('filter')}: {str(record.get('reason', '')).split(':')[0]}"
                found[key] = reasons.setdefault(reason, reason)
            else:
                found[key] = outcome
    return found


def _translated(stage_dir: Path, exc: OSError) -> Exception:
    return disk_full(stage_dir, exc) if exc.errno in SPACE_ERRORS else exc
