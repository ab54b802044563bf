"""The append-only outcome journals of one stage (`<stage>/raw/shard-0000I.jsonl`) and the one index
of every key they hold.

A line is written whole or not at all: `append_line` loops on short writes and, when the disk is
full, truncates back what it half wrote and raises DiskFull. A SIGKILL can still leave a torn last
line (no newline); readers ignore it and the file's next writer truncates it.

A key can have lines in several journals (a `--retry-failed` answer after a failure, a run with
another `--shard N`, journals written before runs were locked). Exactly one line wins, the same
for every reader: an answer (`ok` / `rejected`) beats a failure; among equals the last one read
(journals in name order, lines in file order) wins.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from engine.errors import DiskFull, SpecError
from engine.jsonl import Line, jsonl_lines

SPACE_ERRORS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.jsonl"


def shard_of(path: Path) -> int:
    return int(path.name.split(".")[0].removeprefix("shard-"))


def disk_full(folder: Path, exc: OSError) -> DiskFull:
    return DiskFull(
        f"disk full writing {folder} ({exc.strerror}): free space, then run the same command to resume"
    )


def append_line(fd: int, line: bytes, path: Path) -> int:
    """Append one whole line to an O_APPEND file; returns its offset. On a full disk the bytes already
    written are truncated away, so the file never holds half a line."""
    start = os.lseek(fd, 0, os.SEEK_END)
    view, written = memoryview(line), 0
    try:
        while written < len(line):
            n = os.write(fd, view[written:])
            if n == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written += n
    except OSError as exc:
        if written:
            os.ftruncate(fd, start)
        if exc.errno in SPACE_ERRORS:
            raise disk_full(path.parent, exc) from None
        raise
    return start


def complete_size(path: Path) -> int:
    """Bytes of `path` up to its last newline (a torn tail being written is not counted)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb") as f:
        pos = size
        while pos > 0:
            start = max(0, pos - (1 << 16))
            f.seek(start)
            cut = f.read(pos - start).rfind(b"\n")
            if cut >= 0:
                return start + cut + 1
            pos = start
    return 0


def drop_torn_tail(path: Path) -> int:
    """Truncate a last line a crash left without its newline; returns the bytes dropped. Only the
    file's writer (holding its lock) may call this."""
    if not path.is_file():
        return 0
    size, keep = path.stat().st_size, complete_size(path)
    if keep < size:
        os.truncate(path, keep)
    return size - keep


class Journal:
    """Every journal of a stage, read into one index; `append` writes to this process's own file.

    The index maps key -> (file number, offset, failed) packed into one int, so memory stays
    about one dict entry per key."""

    def __init__(self, stage_dir: Path, shard: int | None = None, *, exclusive: bool = False):
        """`shard`: the journal this process appends to (None: read only). `exclusive`: this process holds
        the whole run, so it may repair (and append to) every journal, not only its own."""
        raw = stage_dir / "raw"
        self.path = raw / shard_name(shard) if shard is not None else None
        self.torn_bytes = 0
        if self.path is not None:
            raw.mkdir(parents=True, exist_ok=True)
        for path in sorted(raw.glob("shard-*.jsonl")):
            if exclusive or path == self.path:  # only files whose writer is this process
                self.torn_bytes += drop_torn_tail(path)
        self.files: list[Path] = sorted(raw.glob("shard-*.jsonl"))
        if self.path is not None and self.path not in self.files:
            self.files.append(self.path)
        self._fds: dict[int, int] = {}  # file number -> append fd, opened when first written
        self.sizes: list[int] = []  # bytes of complete lines per file, as indexed
        self.index: dict[str, int] = {}
        for number, path in enumerate(self.files):
            end = 0
            if path.exists():
                for line in scan(path):
                    self._put(line.record["key"], number, line.offset, line.record.get("status") == "failed")
                    end = line.offset + len(line.raw)
            self.sizes.append(end)
        if self.path is not None:
            self._fds[self.files.index(self.path)] = _open_append(self.path)
        self._readers: dict[int, IO[bytes]] = {}

    def _put(self, key: str, number: int, offset: int, failed: bool) -> None:
        old = self.index.get(key)
        if old is not None and failed and not old & 1:
            return  # an answer is never replaced by a failure
        self.index[key] = (offset << 16 | number) << 1 | failed

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def shard(self, key: str) -> int | None:
        """The shard whose journal holds the key's winning line (None: no outcome yet)."""
        packed = self.index.get(key)
        return None if packed is None else shard_of(self.files[packed >> 1 & 0xFFFF])

    def failed(self, key: str) -> bool:
        packed = self.index.get(key)
        return packed is not None and bool(packed & 1)

    def shards(self) -> list[int]:
        return [shard_of(p) for p in self.files]

    def append(self, entry: dict[str, Any], shard: int | None = None) -> None:
        """Append to this process's own journal, or to `shard`'s (a retried failure goes where the failure
        is, so "the later line wins" means the same to every reader)."""
        assert self.path is not None, "a read-only journal"
        path = self.path if shard is None else self.path.with_name(shard_name(shard))
        number = self.files.index(path)
        if number not in self._fds:
            self._fds[number] = _open_append(path)
        line = orjson.dumps(entry, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        offset = append_line(self._fds[number], line, path)
        self._put(entry["key"], number, offset, entry.get("status") == "failed")
        self.sizes[number] = offset + len(line)

    def get(self, key: str) -> dict[str, Any] | None:
        packed = self.index.get(key)
        if packed is None:
            return None
        number, offset = packed >> 1 & 0xFFFF, packed >> 17
        reader = self._readers.get(number)
        if reader is None:
            reader = self._readers[number] = open(self.files[number], "rb")
        reader.seek(offset)
        return orjson.loads(reader.readline())

    def size(self, shard: int) -> int:
        for number, path in enumerate(self.files):
            if shard_of(path) == shard:
                return self.sizes[number]
        return 0

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
        for fd in self._fds.values():
            os.fsync(fd)
            os.close(fd)
        self._fds.clear()


def _open_append(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in SPACE_ERRORS:
            raise disk_full(path.parent, exc) from None
        raise


def scan(path: Path) -> Iterator[Line]:
    """Every complete line of a journal (a torn tail another process may still be writing is not an
    outcome yet); a line that is not a JSON outcome with a key stops the run with one line."""
    advice = "a corrupt journal line: move the file aside or delete that line to resume"
    with open(path, "rb") as f:
        for line in jsonl_lines(f, path, tail="wait", advice=advice):
            if "key" not in line.record:
                raise SpecError(f"{path}:{line.number}: no `key`; {advice}")
            yield line
