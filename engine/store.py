"""Where a run's files are: a stage's outcome files (read with engine/jsonl.py) and the manifests
(written with engine/atomic.py).

    <out>/<stage>/raw/shard-0000I.jsonl        the journal (engine/journal.py)
    <out>/<stage>/kept/shard-0000I.jsonl       derived from it (engine/derived.py); rejected/, failed/ alike
    <out>/manifest.json (manifest.shard-0000I.json with --shard)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from engine.journal import shard_name as shard_name  # re-exported: callers name shard files from here
from engine.jsonl import jsonl_lines

OUTCOMES = ("kept", "rejected", "failed")


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
            for line in jsonl_lines(handle):
                yield line.record
    finally:
        for handle in handles:
            handle.close()


def manifest_path(out_dir: Path, shard: tuple[int, int] | None) -> Path:
    return out_dir / (
        "manifest.json" if not shard or shard[1] == 1 else f"manifest.shard-{shard[0]:05d}.json"
    )


def read_manifests(out_dir: Path) -> list[dict[str, Any]]:
    return [orjson.loads(p.read_bytes()) for p in sorted(out_dir.glob("manifest*.json"))]
