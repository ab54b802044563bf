"""FIRST's loss against direct full-vocabulary computations: values and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainers.first.head import HeadTransform, student_scores, student_top1
from trainers.first.loss import first_token_loss
from trainers.first.topk_store import TopKReader, TopKWriter


def lm_head_case(n=9, hidden=6, vocab=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(vocab, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.log_softmax(2.5 * torch.randn(n, vocab, generator=g, dtype=torch.float64), -1)
    return h, w, b, teacher


def test_identity_with_k_equal_vocab_is_the_full_kl(tmp_path):
    """k = vocabulary and no transform (c=None): the loss is KL(p_teacher || q_student) over the vocabulary,
    here with the teacher's rows going through the store (raw mode) first."""
    h, w, b, teacher = lm_head_case()
    vocab = w.shape[0]
    top = teacher.float().topk(vocab, -1)
    tokens = np.arange(h.shape[0] + 1) % vocab
    with TopKWriter(tmp_path, vocab, vocab, "h", packed=False) as writer:
        writer.append("r", tokens, top.indices.numpy(), top.values.numpy())
    _, ids, lps = TopKReader(tmp_path)["r"]
    stored = torch.full((h.shape[0], vocab), -torch.inf, dtype=torch.float64)
    stored.scatter_(1, torch.from_numpy(ids).long(), torch.from_numpy(lps).double())
    stored = stored - stored.logsumexp(-1, keepdim=True)  # what the float16 teacher now says

    scores = student_scores(h, w, b, torch.from_numpy(ids).long(), chunk_tokens=4)
    kl, _ = first_token_loss(scores, torch.from_numpy(lps).double(), c=None)
    log_q = torch.log_softmax(h @ w.T + b, -1)
    direct = torch.nn.functional.kl_div(log_q, stored, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl, direct, atol=1e-9)


def reference_loss(h, w, b, ids, teacher_lp, gold, c, tail, ce_weight, head: HeadTransform):
    """The formulas written out on full logits: p~ = softmax(p / c) over the top-k (+ tail) probabilities,
    q^ = student probabilities on the k ids renormalised (or + the student's tail), KL(p~ || q^) + CE."""
    logits = (h @ w.T + b) * head.logit_scale
    if head.softcap:
        logits = head.softcap * torch.tanh(logits / head.softcap)
    log_q_full = torch.log_softmax(logits, -1)
    valid = torch.isfinite(teacher_lp)
    q = torch.where(valid, log_q_full.gather(1, ids).exp(), 0)
    p = teacher_lp.exp()
    if tail:
        p = torch.cat([p, 1 - p.sum(-1, keepdim=True)], -1)
        q = torch.cat([q, 1 - q.sum(-1, keepdim=True)], -1)
        valid = torch.cat([valid, torch.ones_like(valid[:, :1])], -1)
    else:
        q = q / q.sum(-1, keepdim=True)
    scores = torch.where(valid, p / c if c else p.log(), -torch.inf)
    p_t = torch.softmax(scores, -1)
    kl = torch.where(valid, p_t * (p_t.log() - torch.where(valid, q, 1).log()), 0).sum(-1)
    ce = -log_q_full.gather(1, gold[:, None])[:, 0]
    return (kl + ce_weight * ce).sum() / len(h)


@pytest.mark.parametrize(
    "c, tail, ce_weight, head",
    [
        (0.3, False, 0.0, HeadTransform()),
        (None, False, 0.0, HeadTransform()),
        (0.5, True, 0.0, HeadTransform()),
        (0.2, True, 0.7, HeadTransform(logit_scale=2.0)),
        (None, True, 1.0, HeadTransform(logit_scale=0.5)),
        (0.4, False, 0.3, HeadTransform(logit_scale=0.7, softcap=2.0)),
        (0.4, True, 0.0, HeadTransform(logit_scale=1.3, softcap=3.0)),
    ],
)
def test_loss_and_gradients_match_autograd_reference(c, tail, ce_weight, head):
    h, w, b, teacher = lm_head_case(seed=1)
    top = teacher.topk(4, -1)
    ids, lps = top.indices, top.values.clone()
    lps[2, 3] = -torch.inf  # an absent entry
    gold = torch.randint(0, w.shape[0], (h.shape[0],), generator=torch.Generator().manual_seed(2))

    valid = torch.isfinite(lps)
    scores = student_scores(h, w, b, ids, valid, gold if ce_weight else None, head, tail, chunk_tokens=2)
    kl, ce = first_token_loss(scores, lps, c, tail)
    ours = (kl if ce is None else kl + ce_weight * ce).sum() / len(h)
    ref = reference_loss(h, w, b, ids, lps, gold, c, tail, ce_weight, head)
    assert torch.allclose(ours, ref, atol=1e-10)
    for mine, theirs in zip(
        torch.autograd.grad(ours, (h, w, b)), torch.autograd.grad(ref, (h, w, b)), strict=True
    ):
        assert torch.allclose(mine, theirs, atol=1e-9)


def test_chunk_size_does_not_change_values():
    h, w, b, teacher = lm_head_case(n=13, seed=3)
    top = teacher.topk(5, -1)
    gold = top.indices[:, 1]
    whole = student_scores(h, w, b, top.indices, gold=gold, tail=True, chunk_tokens=100)
    pieces = student_scores(h, w, b, top.indices, gold=gold, tail=True, chunk_tokens=3)
    for field in ("z", "lse", "rest", "gold"):
        assert torch.allclose(getattr(whole, field), getattr(pieces, field), atol=1e-12)


def test_softcap_and_scale_follow_the_model_head():
    h, w, b, _ = lm_head_case(seed=4)
    ids = torch.arange(5).repeat(h.shape[0], 1)
    head = HeadTransform(logit_scale=0.5, softcap=3.0)
    scores = student_scores(h, w, b, ids, head=head, tail=True)
    logits = 3.0 * torch.tanh((h @ w.T + b) * 0.5 / 3.0)
    assert torch.allclose(scores.z, logits[:, :5]) and torch.allclose(scores.lse, logits.logsumexp(-1))
    assert torch.allclose(scores.rest, logits[:, 5:].logsumexp(-1))


def test_student_top1_is_the_argmax_and_softmax_of_the_full_logits_in_any_chunking():
    h, w, b, _ = lm_head_case(n=13, seed=5)
    head = HeadTransform(logit_scale=0.7, softcap=4.0)
    probs = torch.softmax(4.0 * torch.tanh((h @ w.T + b) * 0.7 / 4.0), -1)
    for chunk in (1, 4, 100):
        top1, confidence = student_top1(h, w, b, head, chunk_tokens=chunk)
        assert torch.equal(top1, probs.argmax(-1)) and torch.allclose(confidence, probs.max(-1).values)


def test_no_distilled_tokens_gives_an_empty_result():
    h, w, b, _ = lm_head_case()
    scores = student_scores(h[:0], w, b, torch.zeros(0, 5, dtype=torch.long), tail=True)
    kl, _ = first_token_loss(scores, torch.zeros(0, 5), 0.5, True)
    assert kl.shape == (0,) and kl.sum().item() == 0.0
