"""The part every training method shares once its TRL trainer is built: its config, the max_length check,
then resume, train, save, score checkpoints, summarise."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from engine.errors import SpecError
from trainers.checkpoints import evaluate_checkpoints, load_hook, resume_point
from trainers.spec import TrainSpec, config_class
from trainers.summary import build_summary, write_summary

log = logging.getLogger(__name__)


def trl_config(spec: TrainSpec, method: str, out: Path) -> Any:
    """The method's config dataclass from the spec; TRL's own complaint becomes one line naming the table.
    Refuses a launch whose processes would each train alone (see `check_world`)."""
    kwargs = {**spec.trainer_args(method), "output_dir": str(out)}
    try:
        config = config_class(method)(**kwargs)
    except (ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise spec.fail(method, first) from None
    check_world(config.world_size)
    return config


def check_world(trainer_processes: int) -> None:
    """`accelerate launch --multi_gpu` (or torchrun) with no GPU visible and no ACCELERATE_USE_CPU starts N
    processes that each train alone, world size 1, into the same output folder. Refuse that."""
    from accelerate.utils import get_int_from_env

    launched = get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)
    if launched != trainer_processes:
        raise SpecError(
            f"launched as {launched} processes, but the trainer sees {trainer_processes}: each would train "
            "alone into the same output folder (no GPU visible to them?); on CPU keep use_cpu on and launch "
            f"`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {launched} ...`"
        )


def full_length(tokenizer: Any, prompt: Any, completion: Any) -> int:
    """Tokens of prompt + completion before truncation, as TRL renders them (chat template or plain)."""
    if isinstance(prompt, list):
        ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
        return len(ids)
    return len(tokenizer(prompt + completion)["input_ids"])


def _cut(dataset: Any, given: int, limit: int, tokenizer: Any) -> dict[str, int]:
    """{examples, cut, dropped, longest}: examples whose answer max_length cuts (TRL drops those it cuts
    entirely). DPO keeps the untruncated ids (its collator truncates); SFT truncates while preparing, so
    a cut example sits at exactly `limit` tokens and only those are tokenised again."""
    if "chosen_ids" in dataset.column_names:
        columns = zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True)
        lengths = [n for p, c, r in columns if (n := len(p) + max(len(c), len(r))) >= limit]
    else:
        at_limit = [i for i, ids in enumerate(dataset["input_ids"]) if len(ids) >= limit]
        rows = (dataset[i] for i in at_limit)
        lengths = [full_length(tokenizer, row["prompt"], row["completion"]) for row in rows]
    dropped = given - len(dataset)
    return {
        "examples": given,
        "cut": dropped + sum(n > limit for n in lengths),
        "dropped": dropped,
        "longest": max(lengths, default=0),
    }


def check_lengths(spec: TrainSpec, method: str, trainer: Any, given: int, given_eval: int = 0) -> dict:
    """Count the examples whose answer `max_length` cuts off, warn once with the numbers, and fail when no
    training example is left. Returns the counts (for the summary)."""
    limit = trainer.args.max_length
    if limit is None:
        return {}
    if len(trainer.train_dataset) == 0:
        raise spec.fail(
            f"{method}.max_length",
            f"every training prompt is longer than max_length={limit}; raise it, "
            "or set truncation_mode = 'keep_end'",
        )
    report = {
        "max_length": limit,
        "train": _cut(trainer.train_dataset, given, limit, trainer.processing_class),
    }
    if trainer.eval_dataset is not None:
        report["validation"] = _cut(trainer.eval_dataset, given_eval, limit, trainer.processing_class)
    parts = [
        f"{counts['cut']} of {counts['examples']} {'training' if split == 'train' else split} examples"
        + (f" ({counts['dropped']} dropped: nothing of the answer left)" if counts["dropped"] else "")
        for split, counts in report.items()
        if split != "max_length" and counts["cut"]
    ]
    if parts and trainer.is_world_process_zero():
        longest = max(c["longest"] for s, c in report.items() if s != "max_length")
        longest_text = f"; the longest kept one has {longest} tokens" if longest else ""
        log.warning(
            "max_length=%d cuts the end of the answer of %s%s: raise [%s] max_length (TRL's default is 1024)",
            limit,
            " and ".join(parts),
            longest_text,
            method,
        )
    return report


def fit(
    trainer: Any,
    out: Path,
    spec: TrainSpec,
    eval_examples: list[dict[str, Any]],
    *,
    kind: str,
    given: int,
    **extra: Any,
) -> dict:
    """Check what max_length cuts, train (resuming from the newest checkpoint in `out`), save the model,
    score checkpoints, sum up. `kind` is the method; `given` the number of training examples built."""
    cuts = check_lengths(spec, kind, trainer, given, len(eval_examples))
    resume = resume_point(trainer.args.resume_from_checkpoint, out)
    if resume:
        log.info("resuming from %s", resume)
    output = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out))  # adapter (or model) + tokenizer; written on the main process only
    evaluation = evaluate_checkpoints(trainer, out, spec.eval, eval_examples, load_hook(spec.eval.hook))
    summary = build_summary(
        trainer,
        output.metrics,
        kind=kind,
        output_dir=str(out),
        resumed_from=resume,
        evaluation=evaluation,
        max_length_cuts=cuts,
        **extra,
    )
    if trainer.is_world_process_zero():
        write_summary(out, summary)
    return summary


# Held-out metrics worth a place on the terminal line when the best checkpoint has them (FIRST's).
SHOWN = ("eval_first_kl", "eval_top1_agreement", "eval_ece")


def describe(summary: dict[str, Any]) -> str:
    """One line for the terminal: what was trained, how the loss moved, which checkpoint is best."""
    first, last = summary.get("first_loss"), summary.get("last_loss")
    loss = f"loss {first:.3f} -> {last:.3f}" if first is not None and last is not None else "no loss logged"
    best = summary["evaluation"].get("best")
    metric = summary["evaluation"].get("metric")
    chosen = ""
    if best:
        shown = [f"{metric} {best[metric]:.4f}"] + [f"{k[5:]} {best[k]:.4f}" for k in SHOWN if k in best]
        chosen = f"; best {Path(best['path']).name} ({', '.join(shown)})"
    what = f"{summary['kind']} {summary['task']}" if summary.get("task") else summary["kind"]
    return (
        f"{what}: {summary['steps']} steps, {summary['tokens']} tokens, {loss}, "
        f"{summary['train_runtime_s']} s{chosen} -> {summary['output_dir']}"
    )
