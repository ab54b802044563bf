"""Engine answer records -> TRL conversational prompt-completion examples.

Where the records come from is ours (files, globs, `spec.toml:stage`, the validation split); how a record
becomes [system, user] and the assistant's answer is the task's prompt format
(generators/medical/format.py), the same module that asks a teacher or a trained student. The completion
is one assistant message holding the answer as JSON, so TRL supervises only the answer. Tasks: `joint`
(reason + diseases), `diseases`, `reasons` (given the diseases) - the last two are the `split` mode.
"""

from __future__ import annotations

import glob
import logging
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from engine.errors import SpecError
from engine.jsonl import read_jsonl, write_jsonl
from engine.stage_ref import resolve_stage
from engine.types import Record
from generators.medical.format import (
    FORMAT_FILE,
    SPLIT,
    FormatSpec,
    PromptFormat,
    Task,
    find_format,
    load_format,
)
from trainers.ranks import is_main_process
from trainers.spec import TrainSpec

log = logging.getLogger(__name__)


def source_files(spec: TrainSpec, source: str, key: str) -> list[Path]:
    """The JSONL files of one source (made absolute when the spec loaded): a file or glob, or
    'spec.toml:stage' (that stage's kept shards). `key` names the spec key in errors."""
    try:
        stage = resolve_stage(source)
    except SpecError as exc:
        raise spec.fail(key, str(exc)) from None
    if stage is not None:
        files = stage.kept_files()
        hint = f"run `python -m engine run {os.path.relpath(stage.spec)}` first"
    else:
        files = sorted(Path(p) for p in glob.glob(source))
        hint = "check the path (relative to the train spec)"
    if not files:
        raise spec.fail(key, f"{source!r} matches no JSONL file; {hint}")
    return files


def read_sources(spec: TrainSpec, sources: list[str], key: str) -> list[Record]:
    """Records from JSONL files/globs and 'spec.toml:stage' sources, in the order given."""
    files = [file for source in sources for file in source_files(spec, source, key)]
    return [r for file in files for r in read_jsonl(file, tail="skip")]  # a write cut short: its torn line


def examples(
    fmt: PromptFormat, records: list[Record], task: Task, source: str = "data.train"
) -> list[dict[str, Any]]:
    """TRL prompt-completion examples of `records`; a record lacking a needed field fails naming its id."""
    return [fmt.example(record, task, source) for record in records]


def sft_tasks(spec: TrainSpec) -> list[Task]:
    """The adapters `train sft` writes: one `joint`, or the `split` pair (diseases, then reasons)."""
    return ["joint"] if spec.sft.mode == "joint" else list(SPLIT)


def task_dir(root: Path, task: Task) -> Path:
    """Where a task's adapter lives under an output (or init_adapter) folder."""
    return root if task == "joint" else root / task


def train_records(spec: TrainSpec, hint: str = "list JSONL files or 'run/spec.toml:stage'") -> list[Record]:
    """The records a method learns from (data.train, cut to data.max_records); `hint` says what to list."""
    if not spec.data.train:
        raise spec.fail("data.train", f"no training records given; {hint}")
    records = read_sources(spec, spec.data.train, "data.train")
    return records[: spec.data.max_records] if spec.data.max_records else records


def format_keys_given(spec: TrainSpec) -> list[str]:
    """The prompt-format keys `[data]` sets (a method whose records arrive rendered cannot apply them)."""
    return sorted(spec.data.model_fields_set & set(FormatSpec.model_fields))


def save_format(fmt: PromptFormat, root: Path, tasks: list[Task], init_adapter: Path | None) -> None:
    """prompt_format.json beside every adapter a run writes (its output dir and each task's folder), so a
    predict stage's `format_from` asks the student as it was trained. Continuing from an adapter that was
    trained on another format is allowed, with a warning naming what changed."""
    previous = find_format(init_adapter) if init_adapter else None
    if previous is not None and (changes := fmt.changes(load_format(previous).format)):
        log.warning("prompt format differs from the one %s was trained on: %s", previous, "; ".join(changes))
    if not is_main_process():
        return  # one writer: the other ranks of a launch train the same format
    for folder in dict.fromkeys([root, *(task_dir(root, task) for task in tasks)]):
        fmt.save(folder, tasks)


def drop_format(root: Path) -> None:
    """Remove the prompt_format.json an earlier run left in `root`: a run whose records arrived rendered
    saves none, and `format_from` must not ask its student in a format it may not have been trained on."""
    stale = root / FORMAT_FILE
    if is_main_process() and stale.is_file():
        stale.unlink()
        log.warning("%s: removed (left by an earlier run; these records arrived rendered)", stale)


def split_validation(spec: TrainSpec, records: list[Record]) -> tuple[list[Record], list[Record]]:
    """(train, validation): the spec's validation files, else a seeded random share of the records."""
    if spec.data.validation:
        return records, read_sources(spec, spec.data.validation, "data.validation")
    fraction = spec.data.validation_fraction
    if fraction == 0 or len(records) < 2:
        return records, []
    order = list(range(len(records)))
    random.Random(spec.seed).shuffle(order)
    held = set(order[: max(1, round(fraction * len(records)))])
    return [r for i, r in enumerate(records) if i not in held], [
        r for i, r in enumerate(records) if i in held
    ]


def default_format() -> PromptFormat:
    """The built-in prompts, zero-shot, reason first."""
    return FormatSpec().resolve(Path.cwd(), seed=0)


def export_sft(records: Iterable[Record], out: BinaryIO) -> int:
    """`engine export --format sft`: answer records as joint prompt-completion JSONL (built-in prompts)."""
    fmt = default_format()
    rows = ({"id": r.get("id"), **fmt.example(r, "joint", "export")} for r in records)
    return write_jsonl(rows, out)


def export_dpo(records: Iterable[Record], out: BinaryIO) -> int:
    """`engine export --format dpo`: records with chosen/rejected answers as conversational pairs."""
    from trainers.pairs import pair_from_record

    fmt = default_format()
    return write_jsonl((pair_from_record(r, fmt) for r in records), out)
