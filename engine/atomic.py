"""Writing files and folders atomically, the one way: written whole beside the target, flushed to disk,
then renamed over it. A reader sees the old version or the new one, never half of one; a failure (or a
crash) before the rename leaves the old version as it was.

`atomic_output` / `write_json_atomic` / `write_bytes_atomic` for one file; `AtomicFile` when several files
are swapped in together in an order of the caller's (engine/derived.py); `atomic_folder` for a folder
(a converted or merged model).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from engine.journal import SPACE_ERRORS, disk_full


class AtomicFile:
    """A temp file beside `path` that `commit()` puts in place: `finish()` flushes it to disk and closes
    it, `publish()` renames it over `path`; `abort()` removes it. OSErrors are left to the caller (see
    `atomic_output` for the one-line full-disk error). The temp file is `.NAME.tmpPID`, so two processes
    writing the same file never share one; a caller that is the only writer (it holds a lock) may name
    it `.NAME.tmp`, so that one a SIGKILL left is overwritten next time instead of piling up."""

    def __init__(self, path: str | Path, *, only_writer: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{'' if only_writer else os.getpid()}")
        self.file: IO[bytes] = open(self.tmp, "wb")

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def finish(self) -> None:
        """The content on disk (flushed, fsynced, closed) but not in place yet."""
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()

    def publish(self) -> None:
        os.replace(self.tmp, self.path)

    def commit(self) -> None:
        self.finish()
        self.publish()

    def abort(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # a full disk cannot take the buffered rest; the file goes anyway
        self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file that appears at `path` only once fully written; on any failure the old file stays,
    no temp file is left, and a full disk is one DiskFull naming the folder."""
    path = Path(path)
    try:
        target = AtomicFile(path)
    except OSError as exc:
        raise _translated(path, exc) from None
    try:
        yield target.file
        target.commit()
    except OSError as exc:
        raise _translated(path, exc) from None
    finally:
        target.abort()  # after a commit there is nothing left to remove


def _translated(path: Path, exc: OSError) -> Exception:
    return disk_full(path.parent, exc) if exc.errno in SPACE_ERRORS else exc


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as f:
        f.write(data)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """`data` as indented JSON (numpy values allowed), written atomically."""
    write_bytes_atomic(path, orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


@contextmanager
def atomic_folder(dest: str | Path, existing: Literal["replace", "keep"] = "replace") -> Iterator[Path]:
    """A staging folder beside `dest` (`.NAME-XXXX`) to write into; renamed to `dest` when the block ends
    without an error, removed in any case. A `dest` already there is replaced (`"replace"`: the caller
    decided it may go) or kept (`"keep"`: another process made the same folder first, and it won)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        yield staging
        if existing == "replace" and dest.exists():
            shutil.rmtree(dest)
        try:
            os.replace(staging, dest)
        except OSError:
            if existing == "replace" or not dest.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
