"""LoRA SFT with TRL's SFTTrainer on engine answer records, in `joint` or `split` mode.

joint: one adapter answers reason + label, written to output_dir.
split: two adapters, output_dir/diseases (answers the diseases) and output_dir/reasons (given the record
and the diseases, answers the reasons); a predict stage with mode = "split" chains them.
Either way the prompt format is saved beside the adapters (prompt_format.json) before training starts.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from trl import SFTConfig, SFTTrainer

from trainers.checkpoints import load_hook
from trainers.data import (
    Task,
    examples,
    save_format,
    sft_tasks,
    split_validation,
    task_dir,
    train_records,
)
from trainers.fit import fit
from trainers.guard import check_test_overlap
from trainers.modeling import base_folder, build_trl_trainer
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
            "help": "joint: one adapter answers reason + diseases; split: a diseases and a reasons adapter"
        },
    )
    init_adapter: str = field(
        default="", metadata={"help": "continue from this adapter (split: a folder of both)", "path": True}
    )


def build_sft_trainer(
    spec: TrainSpec, task: Task, train: list[dict[str, Any]], evaluation: list[dict[str, Any]], out: Path
) -> SFTTrainer:
    init = task_dir(Path(spec.sft.init_adapter), task) if spec.sft.init_adapter else None
    return build_trl_trainer(SFTTrainer, spec, "sft", init, train, evaluation, out)


def train_sft(spec: TrainSpec) -> list[dict[str, Any]]:
    """Train the adapter(s) the spec asks for; returns one summary per adapter."""
    load_hook(spec.eval.hook)  # a typo in the hook name should fail now, not after training
    records = train_records(spec)
    check_test_overlap(spec, records)
    train, validation = split_validation(spec, records)
    fmt = spec.prompt_format()
    root = Path(spec.sft.output_dir)
    tasks = sft_tasks(spec)
    init = Path(spec.sft.init_adapter) if spec.sft.init_adapter else None
    summaries = []
    for task in tasks:
        out = task_dir(root, task)
        eval_examples = examples(fmt, validation, task, "data.validation")
        train_examples = examples(fmt, train, task)
        trainer = build_sft_trainer(spec, task, train_examples, eval_examples, out)
        if task == tasks[0]:  # the launch is sound and the records render: saved before the first step
            save_format(fmt, root, tasks, init)
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
