"""DPO with TRL's DPOTrainer, starting from the SFT adapter (`[dpo] init_adapter`).

Reference model: when the policy is a PeftModel loaded from an adapter, TRL 1.x adds a frozen copy of
that adapter named "ref" and computes reference log-probs through it (dpo_trainer.py, "create a 'ref'
adapter that is a copy of the 'default' adapter"), so the SFT adapter is both the start and the
reference. Without init_adapter a fresh LoRA is trained and the reference is the base model (adapter
disabled). `beta`, `loss_type` and every other DPOConfig field pass through from the `[dpo]` table.
Pairs built here get their prompt from the spec's format (saved as prompt_format.json); pairs given
already in conversational form keep their own prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from trainers.checkpoints import load_hook
from trainers.data import save_format
from trainers.fit import fit
from trainers.guard import check_test_overlap
from trainers.modeling import base_folder, build_trl_trainer
from trainers.pairs import read_pairs, split_pairs
from trainers.spec import TrainSpec


@dataclass
class DpoConfig(DPOConfig):
    """The `[dpo]` table: these keys plus any field of TRL's DPOConfig."""

    output_dir: str = field(
        default="out/dpo", metadata={"help": "the adapter, its checkpoints and the summary", "path": True}
    )
    init_adapter: str = field(
        default="",
        metadata={"help": "the SFT adapter: the start and (TRL's copy) the reference", "path": True},
    )


def build_dpo_trainer(
    spec: TrainSpec, train: list[dict[str, Any]], evaluation: list[dict[str, Any]], out: Path
) -> DPOTrainer:
    init = Path(spec.dpo.init_adapter) if spec.dpo.init_adapter else None
    return build_trl_trainer(DPOTrainer, spec, "dpo", init, train, evaluation, out)


def train_dpo(spec: TrainSpec) -> list[dict[str, Any]]:
    """Build or read the pairs, check them against the test set, train; returns [the summary]."""
    load_hook(spec.eval.hook)  # a typo in the hook name should fail now, not after training
    fmt = spec.prompt_format()
    pairs, source_records = read_pairs(spec, fmt)
    check_test_overlap(spec, source_records)
    train, validation = split_pairs(spec, pairs, fmt)
    out = Path(spec.dpo.output_dir)
    trainer = build_dpo_trainer(spec, train, validation, out)
    save_format(fmt, out, ["joint"], Path(spec.dpo.init_adapter) if spec.dpo.init_adapter else None)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        Dataset.from_list(pairs).to_json(out / "pairs.jsonl", force_ascii=False)
    summary = fit(
        trainer,
        out,
        spec,
        validation,
        kind="dpo",
        given=len(train),
        task="joint",
        base_model=str(base_folder(spec)),
        init_adapter=spec.dpo.init_adapter,
        records={"pairs": len(pairs), "train": len(train), "validation": len(validation)},
    )
    return [summary]
