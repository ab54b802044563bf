"""FIRST's "trustworthy maximization" (arXiv 2408.12168): re-calibrate the teacher's top-k as
p~_i = exp(p_i / c) / sum_j exp(p_j / c) over its top-k probabilities p_i (not log-probs), with c chosen
by grid search to minimise the teacher's expected calibration error on held-out stored tokens.

The identity (no transform) is a candidate too and is kept unless some c has a lower ECE on the same
validation tokens, so calibrating never makes the targets worse by its own measure. Warnings name the
cases where the measure itself is weak: c on the grid's edge, few validation tokens, and records that are
the teacher's own output (its top-1 is then nearly always the "gold" token, and sharpening always wins)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.errors import SpecError
from trainers.first.topk_store import TopKReader, update_manifest

COARSE_GRID = tuple(round(0.1 * i, 2) for i in range(1, 11))
FINE_STEP = 0.02  # then 0.02 steps within 0.1 of the best coarse c
N_BINS = 10
MIN_VAL_TOKENS = 2000  # below this the ECE per c is noise
MAX_TOP1_AGREEMENT = 0.95  # above this the stored tokens are (almost) the teacher's own choices
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
) -> tuple[float | None, list[tuple[float, float]], float]:
    """Grid search of c: 0.1..1.0 by 0.1, then by FINE_STEP around the best. Returns (c, [(c, ece)...],
    identity's ECE); c is None (the identity) unless a c has a strictly lower ECE (ties go to smaller c)."""
    tried: dict[float, float] = {}

    def run(grid: Sequence[float]) -> None:
        for c in grid:
            if c > 0 and c not in tried:
                tried[c] = teacher_ece(logprobs, ids, gold, c, tail_bucket)

    run(COARSE_GRID)
    coarse_best = min(COARSE_GRID, key=lambda c: (tried[c], c))
    run([round(coarse_best + FINE_STEP * i, 2) for i in range(-5, 6)])
    best = min(tried, key=lambda c: (tried[c], c))
    identity = teacher_ece(logprobs, ids, gold, None, tail_bucket)
    return (best if tried[best] < identity else None), sorted(tried.items()), identity


def validation_keys(keys: Sequence[str], fraction: float) -> list[str]:
    """A stable split: the ceil(fraction * n) keys with the smallest sha256 (independent of key order)."""
    if not 0 < fraction <= 1:
        raise SpecError(f"--val-fraction must be in (0, 1], got {fraction}")
    ranked = sorted(keys, key=lambda key: hashlib.sha256(key.encode()).digest())
    return ranked[: max(1, math.ceil(fraction * len(ranked)))]


@dataclass
class Calibration:
    c: float | None  # None: the identity (no transform) had the lowest ECE
    ece: float
    ece_identity: float  # without the transform (top-k renormalised), for comparison
    tail_bucket: bool
    val_fraction: float
    val_records: int
    val_tokens: int
    top1_agreement: float  # share of validation tokens whose stored (gold) token is the teacher's top-1
    grid: list[tuple[float, float]]
    warnings: list[str] = field(default_factory=list)


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
    c, grid, identity = search_c(logprobs, ids, gold, tail_bucket)
    top1 = np.take_along_axis(ids, logprobs.argmax(-1)[:, None], -1)[:, 0]
    agreement = float((top1 == gold).mean()) if len(gold) else 0.0
    ece = identity if c is None else dict(grid)[c]
    result = Calibration(
        c, ece, identity, tail_bucket, val_fraction, len(keys), len(gold), agreement, grid,
        _warnings(c, grid, len(gold), agreement, val_fraction),
    )  # fmt: skip
    if log:
        log(f"{store_dir}: {len(keys)} validation records, {len(gold)} tokens, tail_bucket={tail_bucket}")
        log(f"  identity (no transform): ECE={identity:.4f}{'  <- chosen' if c is None else ''}")
        for value, err in grid:
            log(f"  c={value:.2f}  ECE={err:.4f}{'  <- chosen' if value == c else ''}")
        for warning in result.warnings:
            log(f"warning: {warning}")
    if write:
        update_manifest(store_dir, calibration=asdict(result))
    return result


def _warnings(
    c: float | None, grid: list[tuple[float, float]], tokens: int, agreement: float, val_fraction: float
) -> list[str]:
    out = []
    if c is not None and c in (grid[0][0], grid[-1][0]):
        effect = "targets close to one-hot: FIRST turns into SFT" if c == grid[0][0] else "flat targets"
        out.append(
            f"c={c:.2f} lies on the edge of the searched grid ({grid[0][0]:.2f}..{grid[-1][0]:.2f}), so the "
            f"search did not find a minimum; this c gives {effect}. Check the validation records"
        )
    if tokens < MIN_VAL_TOKENS:
        out.append(
            f"only {tokens} validation tokens (< {MIN_VAL_TOKENS}): the ECE per c is noisy; capture more "
            "records" + (" or raise --val-fraction" if val_fraction < 1 else "")
        )
    if agreement > MAX_TOP1_AGREEMENT:
        out.append(
            f"the teacher's top-1 is the stored token on {agreement:.1%} of validation tokens (> "
            f"{MAX_TOP1_AGREEMENT:.0%}): these records look like the teacher's own output, on which the "
            "calibration can only learn to sharpen. Calibrate on records with reference answers "
            "(human-written completions), as FIRST does; see docs/first.md"
        )
    return out


def stored_c(manifest: dict, tail_bucket: bool, store: str) -> float | None:
    """The c a store was calibrated with (None: the identity won), refusing a store calibrated for the
    other tail setting."""
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
    return None if cal["c"] is None else float(cal["c"])


def resolve_c(c: float | str | None, manifest: dict, tail_bucket: bool, store: str) -> float | None:
    """A train spec's c: a number, "manifest" (the store's calibrated c) or None / "none" (no transform)."""
    if c is None or (isinstance(c, str) and c.lower() == "none"):
        return None
    if c == "manifest":
        return stored_c(manifest, tail_bucket, store)
    if isinstance(c, str) or not c > 0:
        raise SpecError(f"c: expected a number > 0, 'manifest' or 'none', got {c!r}")
    return float(c)
