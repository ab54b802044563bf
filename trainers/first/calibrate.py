"""FIRST's "trustworthy maximization" (arXiv 2408.12168): re-calibrate the teacher's top-k as
p~_i = exp(p_i / c) / sum_j exp(p_j / c) over its top-k probabilities p_i (not log-probs), with c chosen
by grid search to minimise the teacher's expected calibration error on held-out stored tokens."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import SpecError
from trainers.first.topk_store import TopKReader, update_manifest

COARSE_GRID = tuple(round(0.1 * i, 2) for i in range(1, 11))
FINE_STEP = 0.02  # then 0.02 steps within 0.1 of the best coarse c
N_BINS = 10
TAIL_EPS = 1e-6  # keeps log(1 - sum p) finite when the top-k holds (numerically) all the mass


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012); x is clamped below -TAIL_EPS."""
    x = x.clamp(max=-TAIL_EPS)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def teacher_target(logprobs: torch.Tensor, c: float | None, tail_bucket: bool = False) -> torch.Tensor:
    """Log of the target distribution [..., k] (or [..., k+1] with the tail bucket) from stored top-k
    log-probs (-inf = absent entry, excluded). c=None is the identity: the top-k renormalised."""
    valid = torch.isfinite(logprobs)
    lp = logprobs.to(torch.promote_types(logprobs.dtype, torch.float32)).clamp(max=0.0)
    if tail_bucket:
        tail = log1mexp(torch.logsumexp(lp, dim=-1, keepdim=True))
        lp, valid = torch.cat([lp, tail], -1), torch.cat([valid, torch.ones_like(valid[..., :1])], -1)
    if c is None:
        return lp - torch.logsumexp(lp, dim=-1, keepdim=True)
    return torch.log_softmax(torch.where(valid, lp.exp() / c, -torch.inf), dim=-1)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> float:
    """sum_b n_b/N |accuracy_b - mean confidence_b| over equal-width bins [b/n, (b+1)/n), the last closed."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if confidence.size == 0:
        return 0.0
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, confidence, n_bins))
    return float(gap.sum() / count.sum())  # sum_b |sum correct - sum conf| / N == sum_b n_b/N |acc - conf|


def teacher_ece(
    logprobs: np.ndarray, ids: np.ndarray, gold: np.ndarray, c: float | None, tail: bool = False
) -> float:
    """ECE of the teacher's top-1: confidence = its transformed probability, correct = it is the gold."""
    lp = torch.as_tensor(logprobs, dtype=torch.float32)
    best = lp.argmax(-1, keepdim=True)
    confidence = teacher_target(lp, c, tail).gather(-1, best).squeeze(-1).exp().numpy()
    correct = np.take_along_axis(np.asarray(ids), best.numpy(), -1)[:, 0] == np.asarray(gold)
    return expected_calibration_error(confidence, correct)


def search_c(
    logprobs: np.ndarray, ids: np.ndarray, gold: np.ndarray, tail_bucket: bool = False
) -> tuple[float, list[tuple[float, float]]]:
    """Grid search of c: 0.1..1.0 by 0.1, then by FINE_STEP around the best; returns (c, [(c, ece)...])."""
    tried: dict[float, float] = {}

    def run(grid: Sequence[float]) -> None:
        for c in grid:
            if c > 0 and c not in tried:
                tried[c] = teacher_ece(logprobs, ids, gold, c, tail_bucket)

    run(COARSE_GRID)
    coarse_best = min(COARSE_GRID, key=lambda c: (tried[c], c))
    run([round(coarse_best + FINE_STEP * i, 2) for i in range(-5, 6)])
    best = min(tried, key=lambda c: (tried[c], c))  # ties go to the smaller c
    return best, sorted(tried.items())


def validation_keys(keys: Sequence[str], fraction: float) -> list[str]:
    """A stable split: the ceil(fraction * n) keys with the smallest sha256 (independent of key order)."""
    if not 0 < fraction <= 1:
        raise SpecError(f"--val-fraction must be in (0, 1], got {fraction}")
    ranked = sorted(keys, key=lambda key: hashlib.sha256(key.encode()).digest())
    return ranked[: max(1, math.ceil(fraction * len(ranked)))]


@dataclass
class Calibration:
    c: float
    ece: float
    ece_identity: float  # without the transform (top-k renormalised), for comparison
    tail_bucket: bool
    val_fraction: float
    val_records: int
    val_tokens: int
    grid: list[tuple[float, float]]


def calibrate_store(
    store_dir: str | Path,
    val_fraction: float = 0.1,
    tail_bucket: bool = False,
    write: bool = True,
    log: Callable[[str], None] | None = print,
) -> Calibration:
    """Choose c on a validation split of the store (the gold next token is the stored token id) and,
    with `write`, record it in the store's manifest under "calibration"."""
    reader = TopKReader(store_dir)
    if not len(reader):
        raise SpecError(f"{store_dir}: the store has no records to calibrate on")
    keys = validation_keys(reader.keys(), val_fraction)
    records = [reader[key] for key in keys]
    logprobs = np.concatenate([lp for _, _, lp in records])
    ids = np.concatenate([i for _, i, _ in records])
    gold = np.concatenate([t[1:] for t, _, _ in records])
    scored = np.isfinite(logprobs).any(-1)  # rows the teacher gave nothing for cannot be judged
    logprobs, ids, gold = logprobs[scored], ids[scored], gold[scored]
    c, grid = search_c(logprobs, ids, gold, tail_bucket)
    identity = teacher_ece(logprobs, ids, gold, None, tail_bucket)
    result = Calibration(c, dict(grid)[c], identity, tail_bucket, val_fraction, len(keys), len(gold), grid)
    if log:
        log(f"{store_dir}: {len(keys)} validation records, {len(gold)} tokens, tail_bucket={tail_bucket}")
        log(f"  identity (no transform): ECE={identity:.4f}")
        for value, ece in grid:
            log(f"  c={value:.2f}  ECE={ece:.4f}{'  <- chosen' if value == c else ''}")
    if write:
        update_manifest(store_dir, calibration=asdict(result))
    return result


def stored_c(manifest: dict, tail_bucket: bool, store: str) -> float:
    """The c a store was calibrated with, refusing a store calibrated for the other tail setting."""
    cal = manifest.get("calibration")
    if not cal:
        raise SpecError(
            f"{store}: no calibrated c; run `python -m engine distill calibrate {store}` or set c in the spec"
        )
    if cal["tail_bucket"] != tail_bucket:
        raise SpecError(
            f"{store}: c was calibrated with tail_bucket={cal['tail_bucket']}, training asks {tail_bucket}; "
            f"re-run calibrate{' --tail-bucket' if tail_bucket else ''} or set c explicitly"
        )
    return float(cal["c"])


def resolve_c(c: float | str | None, manifest: dict, tail_bucket: bool, store: str) -> float | None:
    """A train spec's c: a number, "manifest" (the store's calibrated c) or None / "none" (no transform)."""
    if c is None or (isinstance(c, str) and c.lower() == "none"):
        return None
    if c == "manifest":
        return stored_c(manifest, tail_bucket, store)
    if isinstance(c, str) or not c > 0:
        raise SpecError(f"c: expected a number > 0, 'manifest' or 'none', got {c!r}")
    return float(c)
