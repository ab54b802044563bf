"""Reading and writing run files: JSONL records (one clear error per bad line), files that appear only
once whole, a stage's outcome files, and the manifests.

    <out>/<stage>/raw/shard-0000I.jsonl        the journal (engine/journal.py)
    <out>/<stage>/kept/shard-0000I.jsonl       derived from it (engine/derived.py); rejected/, failed/ alike
    <out>/manifest.json (manifest.shard-0000I.json with --shard)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import orjson

from engine.errors import SpecError
from engine.journal import SPACE_ERRORS, disk_full
from engine.journal import shard_name as shard_name  # re-exported: callers name shard files from here

OUTCOMES = ("kept", "rejected", "failed")


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
            if line.strip():
                yield number, _record(path, number, line)


def _record(path: str | Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise SpecError(f"{path}:{number}: not valid JSON ({exc}); fix or remove that line") from None
    if not isinstance(record, dict):
        raise SpecError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    return record


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream the records of a JSONL file (errors as in `numbered_jsonl`)."""
    for _, record in numbered_jsonl(path):
        yield record


def stage_files(stage_dir: Path, outcome: str) -> list[Path]:
    return sorted((stage_dir / outcome).glob("shard-*.jsonl"))


def read_outcome(stage_dir: Path, outcome: str) -> Iterator[dict[str, Any]]:
    """Every record of one outcome of a stage, over all shards. The files are opened together first,
    so a commit renaming files in meanwhile cannot show one record twice (see engine/derived.py)."""
    handles = []
    for path in stage_files(stage_dir, outcome):
        try:
            handles.append(open(path, "rb"))
        except FileNotFoundError:
            continue  # a shard file that a commit is replacing right now: its new one was listed too
    try:
        for handle in handles:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    yield _record(handle.name, number, line)
    finally:
        for handle in handles:
            handle.close()


def write_json_atomic(path: Path, data: Any) -> None:
    with atomic_output(path) as f:
        f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


@contextmanager
def atomic_output(path: Path) -> Iterator[IO[bytes]]:
    """A file that appears at `path` only once fully written; on any failure no temp file is left,
    and a full disk is one DiskFull naming the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in SPACE_ERRORS:
            raise disk_full(path.parent, exc) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def manifest_path(out_dir: Path, shard: tuple[int, int] | None) -> Path:
    return out_dir / (
        "manifest.json" if not shard or shard[1] == 1 else f"manifest.shard-{shard[0]:05d}.json"
    )


def read_manifests(out_dir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(p.read_bytes()) for p in sorted(out_dir.glob("manifest*.json"))]
