"""FIRST (arXiv 2408.12168): distil a teacher's calibrated top-k next-token distributions into a student
that shares its tokenizer. Storage lives in trainers/first/topk_store.py; see docs/first.md.

Public names load lazily, so `trainers.first.cli` does not pull in torch/TRL for `--help`."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FirstConfig": "trainer",
    "FirstLoss": "trainer",
    "FirstTrainer": "trainer",
    "train_first": "trainer",
    "FirstCollator": "collator",
    "align_example": "collator",
    "calibrate_store": "calibrate",
    "teacher_target": "calibrate",
    "expected_calibration_error": "calibrate",
    "first_token_loss": "loss",
    "student_scores": "head",
    "write_teacher_store": "teacher",
    "score_topk": "teacher",
    "prompt_completion_ids": "tokens",
    "tokenise_records": "tokens",
    "TopKReader": "topk_store",
    "TopKWriter": "topk_store",
    "capture_from_completion": "topk_store",
    "next_token_metrics": "metrics",
    "NextTokenStats": "metrics",
    "add_distill_commands": "cli",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainers.first' has no attribute {name!r}")
    return getattr(importlib.import_module(f"trainers.first.{_EXPORTS[name]}"), name)
