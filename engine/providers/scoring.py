"""Teacher-forced top-k scoring with a transformers model, the one scorer: the local provider's `score()`
and its prompt_logprobs answers (so the `topk_capture` stage on a local teacher) and FIRST's in-process
teacher (trainers/first/teacher.py) all call `score_batch`, so they write the same rows.

Log-probs are those of the raw logits, computed as top-k(logits) - logsumexp(logits): no full
log-softmax is materialised, and only the completion positions' logits are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch


class Scored(NamedTuple):
    """Row j is the distribution over completion token j given everything before it (on the CPU)."""

    top_ids: torch.Tensor  # [T, k] long, best first
    top_logprobs: torch.Tensor  # [T, k] float32
    logprobs: torch.Tensor  # [T] float32: of the completion's own tokens


def top_entries(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logsumexp, top-k log-probs, top-k ids) per row of `logits`, without a full log_softmax."""
    lse = torch.logsumexp(logits, dim=-1)
    if k == 0:
        empty = logits.new_empty((logits.shape[0], 0))
        return lse, empty, empty.long()
    values, ids = logits.topk(k, dim=-1)
    return lse, values - lse[:, None], ids


def score_batch(
    model: Any, sequences: Sequence[tuple[list[int], list[int]]], k: int, batch_size: int = 8
) -> list[Scored]:
    """One Scored per (prompt ids, completion ids), in order; `batch_size` sequences per forward pass
    (right-padded, so every real token sees exactly what it would alone)."""
    device = next(model.parameters()).device
    out = []
    for b in range(0, len(sequences), batch_size):
        batch = sequences[b : b + batch_size]
        seqs = [list(p) + list(c) for p, c in batch]
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        keep = width - min(len(p) for p, _ in batch) + 1  # from the earliest last-prompt position on
        with torch.inference_mode():
            logits = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep
            ).logits.float()
            for i, (prompt, completion) in enumerate(batch):
                start = len(prompt) - 1 - (width - keep)  # the last prompt position, in the kept logits
                rows = logits[i, start : start + len(completion)]
                lse, top_lp, top_ids = top_entries(rows, k)
                target = torch.tensor(completion, dtype=torch.long, device=rows.device)
                chosen = rows.gather(1, target[:, None])[:, 0] - lse
                out.append(Scored(top_ids.cpu(), top_lp.cpu(), chosen.cpu()))
    return out
