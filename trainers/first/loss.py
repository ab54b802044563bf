"""FIRST's per-token loss: forward KL(p~_teacher || q^_student), where p~ is the calibrated teacher top-k
(calibrate.teacher_target) and q^ the student's probability on the same k ids renormalised over them,
optionally with a (k+1)-th tail bucket (the teacher's from its k stored entries as
log1mexp(logsumexp(log p)); the student's from head.py) and a cross-entropy term on the gold token."""

from __future__ import annotations

import torch

from trainers.first.calibrate import teacher_target
from trainers.first.head import StudentScores


def student_log_q(scores: StudentScores, valid: torch.Tensor, tail_bucket: bool) -> torch.Tensor:
    """log q^ [N, k] (renormalised over the valid teacher ids) or, with the tail bucket, [N, k+1]:
    the student's log-probabilities on the k ids and of everything else in the last column."""
    z = scores.z.masked_fill(~valid, -torch.inf)
    if not tail_bucket:
        return z - torch.logsumexp(z, dim=-1, keepdim=True)
    return torch.cat([z, scores.rest[:, None]], -1) - scores.lse[:, None]


def first_token_loss(
    scores: StudentScores, teacher_logprobs: torch.Tensor, c: float | None, tail_bucket: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token KL(p~ || q^) [N] and, when scores.gold is set, the cross-entropy -log q(gold) [N]."""
    valid = torch.isfinite(teacher_logprobs)
    log_p = teacher_target(teacher_logprobs, c, tail_bucket)
    log_q = student_log_q(scores, valid, tail_bucket)
    if tail_bucket:
        valid = torch.cat([valid, torch.ones_like(valid[:, :1])], -1)
    zero = torch.zeros((), dtype=log_q.dtype, device=log_q.device)
    # absent entries carry p~ = 0: masked before the product so that no 0 * inf reaches autograd
    log_p, log_q = torch.where(valid, log_p, zero), torch.where(valid, log_q, zero)
    kl = torch.where(valid, log_p.exp() * (log_p - log_q), zero).sum(-1)
    ce = None if scores.gold is None else scores.lse - scores.gold
    return kl, ce
