"""`spec.toml:STAGE`, the one way to name a run's stage as a source of records: its kept records.

Taken wherever records are read (`engine eval`, `engine demos`, a train spec's `data.train` and friends).
The run spec is read and validated, nothing built (engine/spec.py `read_spec`): a stage whose prompts or
adapter are not there yet does not stop anyone reading an earlier stage's records. With a run name, the
stage of that named run (`engine run SPEC --as NAME`, engine/named_runs.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import SpecError
from engine.named_runs import existing_folder
from engine.spec import out_dir, read_spec, stage_named
from engine.store import read_outcome, stage_files


def split_stage_ref(ref: str) -> tuple[str, str] | None:
    """`runs/x/spec.toml:STAGE` -> ("runs/x/spec.toml", "STAGE"); None for anything else (a file, a glob)."""
    spec, sep, stage = str(ref).rpartition(":")
    if not sep or not spec.endswith(".toml") or not stage:
        return None
    return spec, stage


@dataclass(frozen=True)
class StageRef:
    spec: Path
    stage: str
    folder: Path  # <run out>/<stage>

    def kept_files(self) -> list[Path]:
        return stage_files(self.folder, "kept")

    def records(self) -> Iterator[dict[str, Any]]:
        """The stage's kept records, every shard (engine/store.py `read_outcome`)."""
        return read_outcome(self.folder, "kept")


def resolve_stage(ref: str, run_name: str | None = None) -> StageRef | None:
    """The stage `ref` names (None when `ref` is no `spec.toml:STAGE`: a plain file). SpecError, one line,
    when the spec does not load, has no such stage (the line lists its stages), the named run was never
    started, or the stage has no kept records yet (the line says what to run)."""
    split = split_stage_ref(ref)
    if split is None:
        if run_name is not None:
            raise SpecError(
                f"--as {run_name}: give the records as SPEC:STAGE (e.g. runs/x/spec.toml:predict)"
            )
        return None
    spec_path, stage = Path(split[0]), split[1]
    spec = read_spec(spec_path)[0]
    stage_named(spec, spec_path, stage)
    out = out_dir(spec, spec_path)
    if run_name is not None:
        out = existing_folder(spec_path, out, run_name)
    folder = out / stage
    if not (folder / "kept").is_dir():
        again = f" --as {run_name}" if run_name else ""
        raise SpecError(f"{folder}: no kept records yet; run `python -m engine run {split[0]}{again}` first")
    return StageRef(spec_path, stage, folder)
