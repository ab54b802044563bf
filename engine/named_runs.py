"""Named runs: `engine run SPEC --set KEY=VALUE --as NAME` makes a version of a spec a command line.

A named run writes to its own folder beside the spec's output, `<out>-<NAME>` (`out = "out"` gives
`out-v2/`), under the name NAME. Its overrides are recorded there (`overrides.json`) before any work,
so `--as NAME` alone rebuilds the same spec: for a resume, and for `status`, `export`, `filter` and
`eval SPEC:STAGE`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import orjson

from engine.atomic import write_json_atomic
from engine.errors import SpecError
from engine.overrides import split_item
from engine.spec import LoadedSpec, load_spec

RECORD = "overrides.json"
RUN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
SET_BY_AS = ("run.name", "run.out")  # `--as NAME` decides these


def load_run(
    spec: str | Path, name: str | None = None, sets: Sequence[str] = (), *, create: bool = False
) -> LoadedSpec:
    """The spec, or (with `name`) the named run: `sets` applied, or those it recorded when none are given.

    `create` (for `engine run`) records a new named run; otherwise the run must exist already.
    """
    if name is None:
        if sets:
            raise SpecError(
                f"--set {sets[0]}: overrides need a run name (`--as NAME`), so that the changed spec "
                "writes its own folder instead of mixing into the spec's"
            )
        return load_spec(spec)
    if not RUN_NAME.match(name):
        raise SpecError(f"--as {name!r}: a run name uses only [A-Za-z0-9_.-]")
    for item in sets:
        if split_item(item)[0] in SET_BY_AS:
            raise SpecError(f"--set {item}: a named run's name and folder come from --as {name}")
    base = load_spec(spec)
    folder = named_folder(base.out_dir, name)
    recorded = _read_record(folder / RECORD)
    if recorded is None and not create:
        raise _no_run(spec, name, folder)
    if recorded is not None and sets and list(sets) != recorded:
        was = " ".join(f"--set {item}" for item in recorded) or "no --set"
        raise SpecError(
            f"--as {name}: this run was started with {was}; repeat those (or give none to resume it), "
            "or choose another name"
        )
    overrides = list(sets) if recorded is None else recorded
    loaded = load_spec(spec, overrides) if overrides else base
    loaded.spec.run = loaded.spec.run.model_copy(update={"name": name, "out": str(folder)})
    if recorded is None:
        write_json_atomic(folder / RECORD, {"name": name, "spec": str(spec), "overrides": overrides})
    return loaded


def named_folder(out_dir: Path, name: str) -> Path:
    """Where the run NAME of a spec whose own output is `out_dir` writes: `<out>-<NAME>`."""
    return out_dir.with_name(f"{out_dir.name}-{name}")


def existing_folder(spec: str | Path, out_dir: Path, name: str) -> Path:
    """The folder of the named run NAME, which must have been started; SpecError saying how otherwise."""
    folder = named_folder(out_dir, name)
    if _read_record(folder / RECORD) is None:
        raise _no_run(spec, name, folder)
    return folder


def _no_run(spec: str | Path, name: str, folder: Path) -> SpecError:
    return SpecError(
        f"{spec}: no run named {name!r} ({folder} holds none); run `engine run {spec} --as {name}`"
    )


def _read_record(path: Path) -> list[str] | None:
    try:
        record = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise SpecError(
            f"{path}: unreadable named-run record ({exc}); delete it to start the run anew"
        ) from None
    overrides = record.get("overrides") if isinstance(record, dict) else None
    if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
        raise SpecError(f"{path}: `overrides` must be a list of KEY=VALUE strings")
    return overrides
