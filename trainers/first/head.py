"""The student's side of FIRST's loss, from its final hidden states and LM head, in chunks of positions.

Only the k logits at the teacher's ids are needed unless the tail bucket or the cross-entropy asks for
the log-sum-exp over the vocabulary. Then each chunk's [chunk, vocab] logits are folded into a few
statistics in forward and recomputed in backward (a fused autograd function, as TRL's chunked log-prob
does), so memory stays bounded at long sequences: [chunk, vocab] at most, never [tokens, vocab].
The student's tail is the log-sum-exp over the tokens outside the top-k, exact even when the top-k holds
nearly all its mass (where log(1 - sum q) cancels)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

LOGIT_CHUNK_ELEMENTS = 1 << 25  # positions per chunk = this // vocab (128 MiB of fp32 logits)


@dataclass(frozen=True)
class HeadTransform:
    """What the model applies between `lm_head` and its logits (scale, soft-capping). There is no student
    temperature on purpose: a student trained on logits / T answers at T = 1, sharper or flatter than the
    teacher it matched."""

    logit_scale: float = 1.0
    softcap: float | None = None

    def __call__(self, pre: torch.Tensor) -> torch.Tensor:
        x = pre.to(torch.promote_types(pre.dtype, torch.float32))  # at least fp32 for the reductions
        if self.logit_scale != 1.0:
            x = x * self.logit_scale
        if self.softcap:
            x = self.softcap * torch.tanh(x / self.softcap)
        return x

    def backward(self, pre: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """d loss / d pre from d loss / d logits."""
        if self.softcap:
            x = pre.to(grad.dtype) * self.logit_scale
            grad = grad * (1 - torch.tanh(x / self.softcap) ** 2)
        return grad * self.logit_scale if self.logit_scale != 1.0 else grad


@dataclass
class StudentScores:
    """The student's scores for N positions, after the head transform."""

    z: torch.Tensor  # [N, k] logits at the teacher ids
    lse: torch.Tensor | None = None  # [N] log-sum-exp over the vocabulary
    rest: torch.Tensor | None = None  # [N] log-sum-exp over the vocabulary minus the valid teacher ids
    gold: torch.Tensor | None = None  # [N] logit of the gold token


def scores_from_logits(logits: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor, gold=None, tail=False):
    """StudentScores from full [n, vocab] logits (evaluation; training goes through student_scores)."""
    own = torch.where(valid, ids, ids[:, :1])  # absent entries repeat a present id
    rest = torch.logsumexp(logits.scatter(1, own, -torch.inf), dim=-1) if tail else None
    z_gold = None if gold is None else logits.gather(1, gold[:, None])[:, 0]
    return StudentScores(logits.gather(1, ids), torch.logsumexp(logits, dim=-1), rest, z_gold)


class _VocabStats(torch.autograd.Function):
    """z, lse, rest, gold logit of one chunk; the [n, vocab] logits never outlive a call. The backward
    recomputes them in the forward's compute dtype (autocast's, if on), as autocast is off there."""

    @staticmethod
    def forward(ctx, h, weight, bias, ids, own, gold, head: HeadTransform, tail: bool):
        ctx.set_materialize_grads(False)
        pre = F.linear(h, weight, bias)
        logits = head(pre)
        z, lse = logits.gather(1, ids), torch.logsumexp(logits, dim=-1)
        z_gold = logits.gather(1, gold[:, None])[:, 0] if gold is not None else lse.new_zeros(0)
        rest = torch.logsumexp(logits.scatter_(1, own, -torch.inf), dim=-1) if tail else lse.new_zeros(0)
        ctx.save_for_backward(h, weight, bias, ids, own, gold, lse, rest)
        ctx.head, ctx.tail, ctx.dtype = head, tail, pre.dtype
        return z, lse, rest, z_gold

    @staticmethod
    def backward(ctx, g_z, g_lse, g_rest, g_gold):
        h, weight, bias, ids, own, gold, lse, rest = ctx.saved_tensors
        dt = ctx.dtype
        h_, w_ = h.to(dt), weight.to(dt)
        pre = F.linear(h_, w_, None if bias is None else bias.to(dt))
        logits = ctx.head(pre)
        grad = torch.exp(logits - lse[:, None]).mul_(g_lse[:, None]) if g_lse is not None else None
        if g_rest is not None and ctx.tail:  # d rest / d logits = softmax over the tokens outside the top-k
            # in place: logits are not needed after this; the head's backward reads `pre` only when
            # soft-capping, and then `logits` is a separate tensor
            rest_grad = logits.sub_(rest[:, None]).exp_().scatter_(1, own, 0.0).mul_(g_rest[:, None])
            grad = rest_grad if grad is None else grad.add_(rest_grad)
        grad = torch.zeros_like(logits) if grad is None else grad
        if g_z is not None:
            grad.scatter_add_(1, ids, g_z.to(grad.dtype))
        if g_gold is not None and gold is not None:
            grad.scatter_add_(1, gold[:, None], g_gold[:, None].to(grad.dtype))
        grad = ctx.head.backward(pre, grad).to(dt)
        grad_h = (grad @ w_).to(h.dtype) if ctx.needs_input_grad[0] else None
        grad_w = (grad.T @ h_).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b, None, None, None, None, None


def _chunk(weight: torch.Tensor, chunk_tokens: int | None) -> int:
    return chunk_tokens or max(1, LOGIT_CHUNK_ELEMENTS // weight.shape[0])


@torch.no_grad()
def student_top1(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    head: HeadTransform = HeadTransform(),
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's most likely token over the whole vocabulary and its probability, [N] each, from
    hidden states [N, H], one [chunk, vocab] block at a time (held-out metrics)."""
    step = _chunk(weight, chunk_tokens)
    ids, probs = [], []
    for s in range(0, hidden.shape[0], step):
        logits = head(F.linear(hidden[s : s + step], weight, bias))
        top, idx = logits.max(-1)
        ids.append(idx)
        probs.append(torch.exp(top - torch.logsumexp(logits, dim=-1)))
    if not ids:
        return hidden.new_zeros(0, dtype=torch.long), hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(ids), torch.cat(probs)


def _gathered(h, weight, bias, ids, head: HeadTransform):
    z = torch.einsum("nh,nkh->nk", h, weight[ids])  # a [n, k, H] gather, no [n, vocab] product
    return head(z if bias is None else z + bias[ids])


def student_scores(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ids: torch.Tensor,
    valid: torch.Tensor | None = None,
    gold: torch.Tensor | None = None,
    head: HeadTransform = HeadTransform(),
    tail: bool = False,
    chunk_tokens: int | None = None,
) -> StudentScores:
    """Scores for hidden states [N, H] against teacher ids [N, k] (`valid`: the entries the teacher
    filled, for the tail): lse and rest with `tail`, lse and gold with `gold`."""
    valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid
    step = _chunk(weight, chunk_tokens)
    full = tail or gold is not None
    own = torch.where(valid, ids, ids[:, :1])
    parts = []
    for s in range(0, max(hidden.shape[0], 1), step):
        c = slice(s, s + step)
        if full:
            g = None if gold is None else gold[c]
            parts.append(_VocabStats.apply(hidden[c], weight, bias, ids[c], own[c], g, head, tail))
        elif torch.is_grad_enabled():  # recomputing the small gather beats keeping [n, k, H] per chunk
            parts.append((checkpoint(_gathered, hidden[c], weight, bias, ids[c], head, use_reentrant=False),))
        else:
            parts.append((_gathered(hidden[c], weight, bias, ids[c], head),))
    z, *stats = (torch.cat(column) for column in zip(*parts, strict=True))
    if not full:
        return StudentScores(z)
    lse, rest, z_gold = stats
    return StudentScores(z, lse, rest if tail else None, z_gold if gold is not None else None)
