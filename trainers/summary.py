"""The training summary written next to an adapter: summary.json (steps, tokens, losses, time, memory,
checkpoint scores) and loss.png (the loss curve, plus the DPO reward margin when there is one)."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from engine.atomic import write_bytes_atomic

CURVES = ("loss", "rewards/margins")


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process and, on a GPU, the peak allocated by torch."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peaks = {"process_rss": round(rss_kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)}
    if torch.cuda.is_available():
        peaks["cuda_allocated"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peaks


def curves(log_history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series of the training logs (eval entries carry `eval_` keys and are left out)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for key in CURVES:
            if key in entry and "step" in entry:
                series.setdefault(key, []).append((int(entry["step"]), float(entry[key])))
    return series


def build_summary(trainer: Any, train_metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    history = trainer.state.log_history
    series = curves(history)
    tokens = max((int(e["num_tokens"]) for e in history if "num_tokens" in e), default=0)
    runtime = float(train_metrics.get("train_runtime", 0.0))
    losses = [v for _, v in series.get("loss", [])]
    return {
        **extra,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "tokens": tokens,
        "train_runtime_s": round(runtime, 2),
        "tokens_per_s": round(tokens / runtime, 1) if runtime else None,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "peak_memory_mb": peak_memory_mb(),
        "processes": trainer.args.world_size,
        "curves": series,
    }


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    """summary.json (atomic) and loss.png; call on the main process only."""
    text = json.dumps(summary, ensure_ascii=False, indent=2, default=str)
    write_bytes_atomic(folder / "summary.json", text.encode("utf-8"))
    plot_curves(summary["curves"], summary.get("evaluation", {}), folder / "loss.png")


def plot_curves(series: dict[str, list], evaluation: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series) or 1, figsize=(6 * max(len(series), 1), 4), squeeze=False)
    for ax, (key, points) in zip(axes[0], series.items(), strict=False):
        ax.plot([s for s, _ in points], [v for _, v in points], label=f"train {key}")
        ax.set_xlabel("step")
        ax.set_title(key)
        if key == "loss":
            evals = [
                (r["step"], r["eval_loss"]) for r in evaluation.get("checkpoints", []) if "eval_loss" in r
            ]
            if evals:
                ax.plot(*zip(*evals, strict=True), "o-", label="validation loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
