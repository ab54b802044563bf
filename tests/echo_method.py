"""A made-up training method for tests/test_train_methods.py: everything a new method needs is this module
plus one registration line in trainers/methods.py (the test registers it for its own duration)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from trainers.data import Formatter, read_sources
from trainers.fit import fit, trl_config
from trainers.modeling import base_folder, load_for_training, load_tokenizer
from trainers.spec import TrainSpec


@dataclass
class EchoConfig(SFTConfig):
    """The `[echo]` table: SFT with one key of its own."""

    output_dir: str = field(default="out/echo", metadata={"help": "where it all goes", "path": True})
    shout: bool = field(default=False, metadata={"help": "a key only this method has"})


def train_echo(spec: TrainSpec) -> list[dict[str, Any]]:
    examples = Formatter.from_spec(spec).examples(read_sources(spec, spec.data.train, "data.train"), "joint")
    model, peft_config = load_for_training(spec, None)
    out = Path(spec.echo.output_dir)
    trainer = SFTTrainer(
        model=model,
        args=trl_config(spec, "echo", out),
        train_dataset=Dataset.from_list(examples),
        processing_class=load_tokenizer(base_folder(spec)),
        peft_config=peft_config,
    )
    return [fit(trainer, out, spec, [], kind="echo", given=len(examples), shout=trainer.args.shout)]
