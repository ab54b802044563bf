"""Checkpoints of one training run: the last one (to resume) and a score for each on the validation split.

Scoring loads each checkpoint's adapter weights into the trained model in turn and runs the trainer's
own `evaluate()` (distributed-aware under accelerate), plus an optional offline-metric hook on the main
process. The final weights are put back afterwards.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from engine.errors import SpecError
from trainers.spec import EvalSpec

Hook = Callable[[Any, Any, list[dict[str, Any]]], dict[str, float]]
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
ADAPTER_FILE = "adapter_model.safetensors"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `checkpoint-N` folder holding an adapter, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return sorted((step, p) for step, p in found if (p / ADAPTER_FILE).is_file())


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
    """Score every checkpoint in `folder`; returns {'checkpoints': [...], 'best': {...} | None}."""
    if trainer.eval_dataset is None:
        return {"checkpoints": [], "best": None, "metric": spec.metric}
    model = trainer.accelerator.unwrap_model(trainer.model)
    final = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    rows = []
    for step, path in list_checkpoints(folder):
        set_peft_model_state_dict(model, load_file(path / ADAPTER_FILE))
        metrics = trainer.evaluate()
        if hook is not None:
            if trainer.is_world_process_zero():
                metrics.update(hook(model, trainer.processing_class, examples))
            trainer.accelerator.wait_for_everyone()
        rows.append({"step": step, "path": str(path), **metrics})
    set_peft_model_state_dict(model, final)
    return {"checkpoints": rows, "best": pick_best(rows, spec), "metric": spec.metric}


def pick_best(rows: list[dict[str, Any]], spec: EvalSpec) -> dict[str, Any] | None:
    scored = [r for r in rows if isinstance(r.get(spec.metric), (int, float))]
    if not scored:
        return None
    sign = 1 if spec.higher_is_better else -1
    # Ties go to the earlier checkpoint: same score for fewer steps.
    return max(scored, key=lambda r: (sign * r[spec.metric], -r["step"]))
