"""LoRA SFT with TRL's SFTTrainer on engine answer records, in `joint` or `split` mode.

joint: one adapter answers reason + label, written to output_dir.
split: two adapters, output_dir/diseases (answers the label) and output_dir/reasons (given the record and
the label, answers the reasons); `trainers.predict.predict_split` chains them at prediction time.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from trainers.checkpoints import load_hook
from trainers.data import Formatter, Task, read_sources, split_validation
from trainers.fit import fit, trl_config
from trainers.guard import check_test_overlap
from trainers.modeling import base_folder, load_for_training, load_tokenizer
from trainers.spec import TrainSpec


@dataclass
class SftConfig(SFTConfig):
    """The `[sft]` table: these keys plus any field of TRL's SFTConfig."""

    output_dir: str = field(
        default="out/sft", metadata={"help": "the adapter, its checkpoints and the summary", "path": True}
    )
    mode: Literal["joint", "split"] = field(
        default="joint",
        metadata={
            "help": "joint: one adapter answers reason + label; split: a diseases and a reasons adapter"
        },
    )
    init_adapter: str = field(
        default="", metadata={"help": "continue from this adapter (split: a folder of both)", "path": True}
    )


def sft_tasks(spec: TrainSpec) -> list[Task]:
    return ["joint"] if spec.sft.mode == "joint" else ["diseases", "reasons"]


def task_dir(root: Path, task: Task) -> Path:
    """Where a task's adapter lives under an output (or init_adapter) folder."""
    return root if task == "joint" else root / task


def build_sft_trainer(
    spec: TrainSpec, task: Task, train: list[dict[str, Any]], evaluation: list[dict[str, Any]], out: Path
) -> SFTTrainer:
    init = task_dir(Path(spec.sft.init_adapter), task) if spec.sft.init_adapter else None
    model, peft_config = load_for_training(spec, init, "sft.init_adapter")
    trainer = SFTTrainer(
        model=model,
        args=trl_config(spec, "sft", out),
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(evaluation) if evaluation else None,
        processing_class=load_tokenizer(base_folder(spec)),
        peft_config=peft_config,
    )
    return trainer


def train_sft(spec: TrainSpec) -> list[dict[str, Any]]:
    """Train the adapter(s) the spec asks for; returns one summary per adapter."""
    if not spec.data.train:
        raise spec.fail("data.train", "no training data given; list JSONL files or 'run/spec.toml:stage'")
    load_hook(spec.eval.hook)  # a typo in the hook name should fail now, not after training
    records = read_sources(spec, spec.data.train, "data.train")
    if spec.data.max_records:
        records = records[: spec.data.max_records]
    check_test_overlap(spec, records)
    train, validation = split_validation(spec, records)
    formatter = Formatter.from_spec(spec)
    root = Path(spec.sft.output_dir)
    summaries = []
    for task in sft_tasks(spec):
        out = task_dir(root, task)
        eval_examples = formatter.examples(validation, task, "data.validation")
        trainer = build_sft_trainer(spec, task, formatter.examples(train, task), eval_examples, out)
        summaries.append(
            fit(
                trainer,
                out,
                spec,
                eval_examples,
                kind="sft",
                given=len(train),
                task=task,
                base_model=str(base_folder(spec)),
                init_adapter=spec.sft.init_adapter,
                records={"train": len(train), "validation": len(validation)},
            )
        )
        del trainer  # the split mode's second adapter should not share memory with the first
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return summaries
