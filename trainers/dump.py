"""`engine train sft|dpo|first SPEC --dump-examples FILE`: the exact rows a training run would learn from,
as JSONL (TRL's conversational prompt/completion, or prompt/chosen/rejected for DPO, each with the source
record's `id`, its `split`, and for SFT/DPO the `task`), written without loading a model or training. Each
method names its rows function in the registry (trainers/methods.py)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from engine.atomic import atomic_output
from engine.errors import SpecError
from trainers.data import examples, sft_tasks, split_validation, train_records
from trainers.pairs import read_pairs, split_pairs
from trainers.spec import TrainSpec

Row = dict[str, Any]


def sft_rows(spec: TrainSpec) -> Iterator[Row]:
    """What `train sft` trains (split `train`) and scores checkpoints on (split `validation`)."""
    fmt = spec.prompt_format()
    train, validation = split_validation(spec, train_records(spec))
    for task in sft_tasks(spec):
        for split, records in (("train", train), ("validation", validation)):
            for record, example in zip(records, examples(fmt, records, task, f"data.{split}"), strict=True):
                yield {"id": record.get("id"), "task": task, "split": split, **example}


def dpo_rows(spec: TrainSpec) -> Iterator[Row]:
    fmt = spec.prompt_format()
    pairs, _ = read_pairs(spec, fmt)
    train, validation = split_pairs(spec, pairs, fmt)
    for split, rows in (("train", train), ("validation", validation)):
        for pair in rows:
            yield {"id": pair.get("id"), "task": "joint", "split": split, **pair}


def first_rows(spec: TrainSpec) -> Iterator[Row]:
    """What `train first` trains and scores on, its store key also as `id`: labelled records rendered by
    `[data]`'s format (the rows to capture the teacher's top-k on), or the rendered rows as they are."""
    from trainers.first.trainer import first_examples, first_records

    key = spec.first.key_field
    records, fmt = first_records(spec)
    train, validation = split_validation(spec, records)
    for split, part in (("train", train), ("validation", validation)):
        for row in first_examples(spec, part, fmt, f"data.{split}"):
            yield {"id": row[key], "split": split, **row}


def dump_rows(rows: Iterator[Row], path: Path) -> str:
    """Write `rows` to `path` ("-": standard output); returns a one-line summary."""
    counts: Counter[str] = Counter()

    def lines() -> Iterator[bytes]:
        for row in rows:
            counts[" ".join(str(row[k]) for k in ("task", "split") if k in row) or "rows"] += 1
            yield orjson.dumps(row) + b"\n"

    if str(path) == "-":
        for line in lines():
            sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
    else:
        if path.is_dir():
            raise SpecError(f"--dump-examples {path}: is a folder; give a file name")
        with atomic_output(path) as out:
            for line in lines():
                out.write(line)
    parts = ", ".join(f"{name}: {n}" for name, n in counts.items()) or "no rows"
    return f"wrote {sum(counts.values())} examples ({parts}) to {path}; nothing was trained"
