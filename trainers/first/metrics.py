"""Held-out next-token metrics of a student on FIRST batches: the FIRST KL to the calibrated teacher, top-1
agreement with the teacher, top-1 accuracy on the gold token and the student's expected calibration error.

`NextTokenStats` keeps running sums in one tensor, so evaluation adds them up batch by batch and across
processes (one all-reduce) before dividing; FirstTrainer's evaluation and `next_token_metrics` share it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from trainers.first.calibrate import N_BINS
from trainers.first.head import scores_from_logits
from trainers.first.loss import first_token_loss

_SCALARS = 4  # tokens, KL sum, agreements with the teacher, correct top-1s; then 3 x N_BINS for the ECE


class NextTokenStats:
    """Sums over distilled tokens; ECE bins are equal-width over the student's top-1 probability."""

    def __init__(self) -> None:
        self.totals = torch.zeros(_SCALARS + 3 * N_BINS, dtype=torch.float64)

    @classmethod
    def from_totals(cls, totals: torch.Tensor) -> NextTokenStats:
        stats = cls()
        stats.totals = totals.to(torch.float64)
        return stats

    @torch.no_grad()
    def add(
        self,
        kl: torch.Tensor,
        top1: torch.Tensor,
        confidence: torch.Tensor,
        teacher_top1: torch.Tensor,
        gold: torch.Tensor,
    ) -> None:
        """Per token [N]: the KL, the student's top-1 id and probability, the teacher's top-1, the gold id."""
        confidence = confidence.detach().double().cpu()
        correct = (top1 == gold).double().cpu()
        bins = (confidence * N_BINS).long().clamp(0, N_BINS - 1)
        t = self.totals
        t[0] += len(kl)
        t[1] += kl.double().sum().cpu()
        t[2] += (top1 == teacher_top1).sum().cpu()
        t[3] += correct.sum()
        t[_SCALARS : _SCALARS + N_BINS] += torch.bincount(bins, minlength=N_BINS).double()
        t[_SCALARS + N_BINS : _SCALARS + 2 * N_BINS] += torch.bincount(bins, confidence, minlength=N_BINS)
        t[_SCALARS + 2 * N_BINS :] += torch.bincount(bins, correct, minlength=N_BINS)

    def metrics(self) -> dict[str, float]:
        t = self.totals
        n = max(float(t[0]), 1.0)
        confidence, correct = t[_SCALARS + N_BINS : _SCALARS + 2 * N_BINS], t[_SCALARS + 2 * N_BINS :]
        return {
            "tokens": int(t[0]),
            "first_kl": float(t[1]) / n,
            "top1_agreement": float(t[2]) / n,
            "accuracy": float(t[3]) / n,
            # sum_b |sum correct - sum confidence| / N == sum_b n_b/N |accuracy_b - confidence_b|
            "ece": float((correct - confidence).abs().sum()) / n,
        }


@torch.no_grad()
def next_token_metrics(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    c: float | None = None,
    tail_bucket: bool = False,
) -> dict[str, float]:
    """Over every distilled token (label != -100) of `batches` (FirstCollator output), from the model's full
    logits; first_kl is the KL FIRST trains (with this c and tail setting)."""
    model.eval()
    stats = NextTokenStats()
    device = next(model.parameters()).device
    for batch in batches:
        batch = {name: value.to(device) for name, value in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        mask = batch["labels"][:, 1:] != -100
        logits, gold = logits[mask].float(), batch["labels"][:, 1:][mask]
        t_ids, t_lps = batch["teacher_ids"][:, :-1][mask], batch["teacher_logprobs"][:, :-1][mask]
        scores = scores_from_logits(logits, t_ids, torch.isfinite(t_lps), None, tail_bucket)
        kl, _ = first_token_loss(scores, t_lps, c, tail_bucket)
        top_p, top = logits.softmax(-1).max(-1)
        stats.add(kl, top, top_p, t_ids.gather(1, t_lps.argmax(-1, keepdim=True))[:, 0], gold)
    return stats.metrics()
