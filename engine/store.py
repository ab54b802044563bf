"""Crash-safe storage of one run: an append-only journal of outcomes per stage and shard,
the outputs derived from it, and an atomically written manifest.

    <out>/<stage>/raw/shard-0000I.jsonl        one line per outcome (ok | rejected | failed)
    <out>/<stage>/kept/shard-0000I.jsonl       after the filter chain, in commit order
    <out>/<stage>/rejected/shard-0000I.jsonl   filter name + reason + record
    <out>/<stage>/failed/shard-0000I.jsonl     error class + message + attempts
    <out>/manifest.json (manifest.shard-0000I.json with --shard)

Each journal line is written with one write() on an O_APPEND file, so a SIGKILL leaves at most
a torn last line; opening the shard detects and truncates it. The derived files are rewritten
atomically (temp file + rename) from the journal, so they never need repair.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson

from engine.errors import SpecError

OUTCOMES = ("kept", "rejected", "failed")


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.jsonl"


class Journal:
    """The append-only outcome log of one stage and shard, with an index of keys already done."""

    def __init__(self, stage_dir: Path, shard: int = 0, *, readonly: bool = False):
        self.path = stage_dir / "raw" / shard_name(shard)
        self.torn_bytes = 0
        self._fd = -1
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.torn_bytes = _drop_torn_tail(self.path)
        self.index: dict[str, tuple[Path, int]] = {}
        for path in sorted(self.path.parent.glob("shard-*.jsonl")):
            # every shard's outcomes count as done, so a changed --shard N never repeats work;
            # a later line for the same key (a --retry-failed answer) supersedes the earlier one
            for offset, entry in _scan(path):
                self.index[entry["key"]] = (path, offset)
        if not readonly:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def append(self, entry: dict[str, Any]) -> None:
        line = orjson.dumps(entry, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        offset = os.lseek(self._fd, 0, os.SEEK_END)
        os.write(self._fd, line)
        self.index[entry["key"]] = (self.path, offset)

    def get(self, key: str) -> dict[str, Any] | None:
        where = self.index.get(key)
        if where is None:
            return None
        with open(where[0], "rb") as f:
            f.seek(where[1])
            return orjson.loads(f.readline())

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def _drop_torn_tail(path: Path) -> int:
    """Truncate a last line that a crash left without its newline; returns the bytes dropped."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return 0
        chunk, pos = 1 << 16, size
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            cut = f.read(pos - start).rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            pos = start
        else:
            keep = 0
        f.truncate(keep)
        return size - keep


def _scan(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                return  # a torn tail another process may still be writing: not an outcome yet
            try:
                entry = orjson.loads(line)
                entry["key"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise SpecError(
                    f"{path}:{number}: corrupt journal line (not a JSON outcome with a key); "
                    f"move the file aside or delete that line to resume"
                ) from None
            yield offset, entry
            offset += len(line)


def numbered_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line of a JSONL file; a file that cannot be opened or a
    bad line raises one clear SpecError naming the file and line."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise SpecError(f"{path}: cannot open ({exc.strerror}); check the path") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise SpecError(f"{path}:{number}: not valid JSON ({exc}); fix or remove that line") from None
            if not isinstance(record, dict):
                raise SpecError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream the records of a JSONL file (errors as in `numbered_jsonl`)."""
    for _, record in numbered_jsonl(path):
        yield record


def stage_files(stage_dir: Path, outcome: str) -> list[Path]:
    return sorted((stage_dir / outcome).glob("shard-*.jsonl"))


def read_outcome(stage_dir: Path, outcome: str) -> Iterator[dict[str, Any]]:
    for path in stage_files(stage_dir, outcome):
        yield from read_jsonl(path)


class DerivedWriter:
    """Writes kept/rejected/failed of one stage and shard to temp files; `commit()` renames them in."""

    def __init__(self, stage_dir: Path, shard: int = 0, *, replace_all: bool = False):
        self.replace_all = replace_all  # a replay merges every shard into shard 0
        self.targets = {o: stage_dir / o / shard_name(shard) for o in OUTCOMES}
        self.files: dict[str, IO[bytes]] = {}
        for outcome, target in self.targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            self.files[outcome] = open(target.with_suffix(".jsonl.tmp"), "wb")

    def write(self, outcome: str, record: dict[str, Any]) -> None:
        self.files[outcome].write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")

    def commit(self) -> None:
        for outcome, f in self.files.items():
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(f.name, self.targets[outcome])
            if self.replace_all:
                for other in self.targets[outcome].parent.glob("shard-*.jsonl"):
                    if other != self.targets[outcome]:
                        other.unlink()

    def abort(self) -> None:
        for f in self.files.values():
            f.close()
            Path(f.name).unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    os.replace(tmp, path)


@contextmanager
def atomic_output(path: Path) -> Iterator[IO[bytes]]:
    """A file that appears at `path` only once fully written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def manifest_path(out_dir: Path, shard: tuple[int, int] | None) -> Path:
    return out_dir / (
        "manifest.json" if not shard or shard[1] == 1 else f"manifest.shard-{shard[0]:05d}.json"
    )


def read_manifests(out_dir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(p.read_bytes()) for p in sorted(out_dir.glob("manifest*.json"))]
