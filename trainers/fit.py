"""The part every training run shares once its TRL trainer is built: resume, train, save, score, summarise."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainers.checkpoints import evaluate_checkpoints, load_hook, resume_point
from trainers.spec import TrainSpec
from trainers.summary import build_summary, write_summary

log = logging.getLogger(__name__)


def trl_config(spec: TrainSpec, command: str, config_cls: type, out: Path) -> Any:
    """SFTConfig/DPOConfig from the spec; TRL's own complaint becomes one line naming the table."""
    kwargs = spec.trainer_args(command)  # type: ignore[arg-type]
    if kwargs.get("resume_from_checkpoint"):
        kwargs["resume_from_checkpoint"] = str(spec.resolve(kwargs["resume_from_checkpoint"]))
    try:
        return config_cls(output_dir=str(out), **kwargs)
    except (ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise spec.fail(f"[{command}]", first) from None


def check_kept(spec: TrainSpec, command: str, given: int, trainer: Any) -> None:
    """TRL silently drops examples whose answer max_length cut off: warn, and fail when none is left."""
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise spec.fail(
            f"{command}.max_length",
            f"every training prompt is longer than max_length={trainer.args.max_length}; raise it, "
            "or set truncation_mode = 'keep_end'",
        )
    if kept < given:
        log.warning("%d of %d training examples dropped: answer cut off by max_length", given - kept, given)


def fit(trainer: Any, out: Path, spec: TrainSpec, eval_examples: list[dict[str, Any]], **extra: Any) -> dict:
    """Train (resuming from the newest checkpoint in `out`), save the adapter, score checkpoints, sum up."""
    resume = resume_point(trainer.args.resume_from_checkpoint, out)
    if resume:
        log.info("resuming from %s", resume)
    output = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out))  # adapter + tokenizer; the trainer writes on the main process only
    evaluation = evaluate_checkpoints(trainer, out, spec.eval, eval_examples, load_hook(spec.eval.hook))
    summary = build_summary(
        trainer, output.metrics, output_dir=str(out), resumed_from=resume, evaluation=evaluation, **extra
    )
    if trainer.is_world_process_zero():
        write_summary(out, summary)
    return summary


def describe(summary: dict[str, Any]) -> str:
    """One line for the terminal: what was trained, how the loss moved, which checkpoint is best."""
    first, last = summary.get("first_loss"), summary.get("last_loss")
    loss = f"loss {first:.3f} -> {last:.3f}" if first is not None and last is not None else "no loss logged"
    best = summary["evaluation"].get("best")
    metric = summary["evaluation"].get("metric")
    chosen = f"; best {Path(best['path']).name} ({metric} {best[metric]:.4f})" if best else ""
    return (
        f"{summary['kind']} {summary['task']}: {summary['steps']} steps, {summary['tokens']} tokens, {loss}, "
        f"{summary['train_runtime_s']} s{chosen} -> {summary['output_dir']}"
    )
