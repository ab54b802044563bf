"""Checkpoints of one training run: the last one (to resume) and a score for each on the validation split.

Scoring loads each checkpoint's weights (the adapter, or the whole model when trained without LoRA) into
the trained model in turn and runs the trainer's own `evaluate()` (distributed-aware under accelerate),
plus an optional offline-metric hook on the main process. The final weights, as saved in the output
folder, are put back afterwards, and scored too when no checkpoint holds them.

Under several processes every rank scores the same checkpoints in the same order (each `evaluate()` is a
collective): they list the folder only after a barrier, once the main process has written everything.
When the weights are sharded (DeepSpeed ZeRO-3, FSDP) a checkpoint's full adapter cannot be put into the
model as it stands, and a hook's forward on the main process alone would wait for the other shards: only
the final weights in memory are scored then, without the hook.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers.trainer_utils import load_sharded_checkpoint

from engine.errors import SpecError
from trainers.spec import EvalSpec

log = logging.getLogger(__name__)
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
    # Trainer does not wait after writing the last checkpoint, nor does save_model: without this, another
    # rank could list fewer checkpoints (then wait forever in a different evaluate()) or read a torn file.
    trainer.accelerator.wait_for_everyone()
    checkpoints = list_checkpoints(folder)
    if is_sharded(trainer):
        if checkpoints or hook is not None:
            log.warning(
                "sharded weights (ZeRO-3 / FSDP): scoring the final weights only%s; "
                "train with DDP or ZeRO-2 to have every checkpoint scored",
                ", without eval.hook" if hook is not None else "",
            )
        checkpoints, hook = [], None

    def score(step: int, path: Path) -> dict[str, Any]:
        metrics = trainer.evaluate()
        if hook is not None:
            if trainer.is_world_process_zero():
                metrics.update(hook(model, trainer.processing_class, examples))
            trainer.accelerator.wait_for_everyone()
        return {"step": step, "path": str(path), **metrics}

    rows = []
    for step, path in checkpoints:
        load_weights(model, path)
        rows.append(score(step, path))
    if checkpoints:
        load_weights(model, folder)
    if not checkpoints or checkpoints[-1][0] != trainer.state.global_step:
        rows.append(score(trainer.state.global_step, folder))
    return {"checkpoints": rows, "best": pick_best(rows, spec), "metric": spec.metric}


def is_sharded(trainer: Any) -> bool:
    """True when each process holds only a shard of the weights (DeepSpeed ZeRO-3 or FSDP)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return True
    plugin = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
    return plugin is not None and plugin.zero_stage == 3


def pick_best(rows: list[dict[str, Any]], spec: EvalSpec) -> dict[str, Any] | None:
    scored = [r for r in rows if isinstance(r.get(spec.metric), (int, float))]
    if not scored:
        return None
    sign = 1 if spec.higher_is_better else -1
    # Ties go to the earlier checkpoint: same score for fewer steps.
    return max(scored, key=lambda r: (sign * r[spec.metric], -r["step"]))
