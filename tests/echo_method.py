"""A made-up training method for tests/test_train_methods.py: everything a new method needs is this module
plus one registration line in trainers/methods.py (the test registers it for its own duration)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from trainers.data import examples, read_sources
from trainers.fit import fit, trl_config
from trainers.modeling import base_folder, load_for_training, load_tokenizer
from trainers.spec import TrainSpec


@dataclass
class EchoConfig(SFTConfig):
    """The `[echo]` table: SFT with one key of its own."""

    output_dir: str = field(default="out/echo", metadata={"help": "where it all goes", "path": True})
    shout: bool = field(default=False, metadata={"help": "a key only this method has"})


def echo_rows(spec: TrainSpec) -> list[dict[str, Any]]:
    """What `train_echo` learns from, as `--dump-examples` writes it."""
    records = read_sources(spec, spec.data.train, "data.train")
    return [{"id": r["id"], **e} for r, e in zip(records, echo_examples(spec, records), strict=True)]


def echo_examples(spec: TrainSpec, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return examples(spec.prompt_format(), records, "joint")


def train_echo(spec: TrainSpec) -> list[dict[str, Any]]:
    rows = echo_examples(spec, read_sources(spec, spec.data.train, "data.train"))
    model, peft_config = load_for_training(spec, None)
    out = Path(spec.echo.output_dir)
    trainer = SFTTrainer(
        model=model,
        args=trl_config(spec, "echo", out),
        train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(base_folder(spec)),
        peft_config=peft_config,
    )
    return [fit(trainer, out, spec, [], kind="echo", given=len(rows), shout=trainer.args.shout)]
