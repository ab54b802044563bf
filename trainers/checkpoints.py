"""Checkpoints of one training run: the last one (to resume) and a score for each on the validation split.

Scoring loads each checkpoint's weights (the adapter, or the whole model when trained without LoRA) into
the trained model in turn and runs the trainer's own `evaluate()` (distributed-aware under accelerate),
plus an optional offline-metric hook on the main process. The final weights, as saved in the output
folder, are put back afterwards, and scored too when no checkpoint holds them.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers.trainer_utils import load_sharded_checkpoint

from engine.errors import SpecError
from trainers.spec import EvalSpec

Hook = Callable[[Any, Any, list[dict[str, Any]]], dict[str, float]]
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
ADAPTER_FILE = "adapter_model.safetensors"
MODEL_FILES = ("model.safetensors", "model.safetensors.index.json")  # full fine-tuning, one file or shards


def has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in (ADAPTER_FILE, *MODEL_FILES))


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `checkpoint-N` folder holding weights, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return sorted((step, p) for step, p in found if has_weights(p))


def load_weights(model: Any, folder: Path) -> None:
    """Put the weights saved in `folder` into `model`: its adapter, or (no LoRA) every weight."""
    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, load_file(folder / ADAPTER_FILE))
    elif (folder / MODEL_FILES[0]).is_file():
        model.load_state_dict(load_file(folder / MODEL_FILES[0]), strict=False)  # tied weights are saved once
    else:
        load_sharded_checkpoint(model, folder, strict=False)


def resume_point(explicit: str | None, folder: Path) -> str | None:
    """The checkpoint to resume from: the one the spec names, else the newest in the output folder."""
    if explicit:
        return explicit
    checkpoints = list_checkpoints(folder)
    # Trainer restores optimizer/scheduler/RNG too, so only a checkpoint with its trainer state counts.
    complete = [p for _, p in checkpoints if (p / "trainer_state.json").is_file()]
    return str(complete[-1]) if complete else None


def load_hook(name: str) -> Hook | None:
    """Import 'package.module:function'; '' means no hook."""
    if not name:
        return None
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise SpecError(f"eval.hook {name!r}: expected 'module:function'")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"eval.hook {name!r}: cannot import ({exc})") from None


def evaluate_checkpoints(
    trainer: Any, folder: Path, spec: EvalSpec, examples: list[dict[str, Any]], hook: Hook | None = None
) -> dict[str, Any]:
    """Score every checkpoint in `folder` (and the final weights saved there when no checkpoint holds
    them); returns {'checkpoints': [...], 'best': {...} | None, 'metric': ...}."""
    if trainer.eval_dataset is None:
        return {"checkpoints": [], "best": None, "metric": spec.metric}
    model = trainer.accelerator.unwrap_model(trainer.model)

    def score(step: int, path: Path) -> dict[str, Any]:
        metrics = trainer.evaluate()
        if hook is not None:
            if trainer.is_world_process_zero():
                metrics.update(hook(model, trainer.processing_class, examples))
            trainer.accelerator.wait_for_everyone()
        return {"step": step, "path": str(path), **metrics}

    checkpoints = list_checkpoints(folder)
    rows = []
    for step, path in checkpoints:
        load_weights(model, path)
        rows.append(score(step, path))
    if checkpoints:
        trainer.accelerator.wait_for_everyone()  # the main process has written the final weights
        load_weights(model, folder)
    if not checkpoints or checkpoints[-1][0] != trainer.state.global_step:
        rows.append(score(trainer.state.global_step, folder))
    return {"checkpoints": rows, "best": pick_best(rows, spec), "metric": spec.metric}


def pick_best(rows: list[dict[str, Any]], spec: EvalSpec) -> dict[str, Any] | None:
    scored = [r for r in rows if isinstance(r.get(spec.metric), (int, float))]
    if not scored:
        return None
    sign = 1 if spec.higher_is_better else -1
    # Ties go to the earlier checkpoint: same score for fewer steps.
    return max(scored, key=lambda r: (sign * r[spec.metric], -r["step"]))
