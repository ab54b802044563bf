"""Held-out next-token metrics of a student on FIRST batches: the FIRST loss, top-1 agreement with the
teacher, top-1 accuracy on the gold token and the student's expected calibration error."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from trainers.first.calibrate import expected_calibration_error
from trainers.first.head import scores_from_logits
from trainers.first.loss import first_token_loss


@torch.no_grad()
def next_token_metrics(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    c: float | None = None,
    tail_bucket: bool = False,
) -> dict[str, float]:
    """Over every distilled token (label != -100) of `batches` (FirstCollator output); first_kl is the
    loss FIRST trains (with this c and tail setting)."""
    model.eval()
    kl_sum, agree, correct, confidence, hits = 0.0, 0, 0, [], []
    device = next(model.parameters()).device
    for batch in batches:
        batch = {name: value.to(device) for name, value in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        mask = batch["labels"][:, 1:] != -100
        logits, gold = logits[mask].float(), batch["labels"][:, 1:][mask]
        t_ids, t_lps = batch["teacher_ids"][:, :-1][mask], batch["teacher_logprobs"][:, :-1][mask]
        scores = scores_from_logits(logits, t_ids, torch.isfinite(t_lps), None, tail_bucket)
        kl, _ = first_token_loss(scores, t_lps, c, tail_bucket)
        kl_sum += kl.sum().item()
        probs = logits.softmax(-1)
        top_p, top = probs.max(-1)
        agree += (top == t_ids.gather(1, t_lps.argmax(-1, keepdim=True))[:, 0]).sum().item()
        correct += (top == gold).sum().item()
        confidence.append(top_p.cpu().numpy())
        hits.append((top == gold).cpu().numpy())
    n = max(sum(len(x) for x in confidence), 1)
    conf, hit = np.concatenate(confidence or [np.zeros(0)]), np.concatenate(hits or [np.zeros(0)])
    return {
        "tokens": n,
        "first_kl": kl_sum / n,
        "teacher_agreement": agree / n,
        "accuracy": correct / n,
        "ece": expected_calibration_error(conf, hit),
    }
