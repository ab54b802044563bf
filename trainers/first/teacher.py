"""Teacher-forced top-k scoring with a local transformers model: the FIRST targets of prompt/completion
records, tokenised by trainers/first/tokens.py (as TRL's SFTTrainer does), written into a top-k store.
A served teacher fills the same store through the engine's `topk_capture` stage instead."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from trainers.first.tokens import prompt_completion_ids
from trainers.first.topk_store import TopKWriter, vocab_hash


@torch.no_grad()
def score_topk(
    model: Any, sequences: Sequence[tuple[list[int], list[int]]], k: int = 5, batch_size: int = 8
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per (prompt ids, completion ids): token_ids[T+1] (last prompt token + completion), top-k ids and
    log-probs [T, k], row j over token_ids[j + 1]. Top-k is taken on the logits and the log-sum-exp
    subtracted, so no full log-softmax is materialised."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for b in range(0, len(sequences), batch_size):
        batch = sequences[b : b + batch_size]
        seqs = [p + c for p, c in batch]
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        for i, (prompt, completion) in enumerate(batch):
            rows = logits[i, len(prompt) - 1 : len(prompt) + len(completion) - 1]
            top = rows.topk(k, dim=-1)
            lps = top.values - rows.logsumexp(-1, keepdim=True)
            tokens = np.asarray([prompt[-1], *completion], dtype=np.int32)
            out.append((tokens, top.indices.cpu().numpy().astype(np.int32), lps.cpu().numpy()))
    return out


def write_teacher_store(
    model: Any,
    tokenizer: Any,
    records: Iterable[dict],
    store_dir: str,
    k: int = 5,
    packed: bool = True,
    key_field: str = "key",
    batch_size: int = 8,
) -> int:
    """Score `records` ({key, prompt, completion}) with `model` and append them to a store; returns the
    number written. Keys already in the store are skipped (resume)."""
    vocab = model.get_output_embeddings().weight.shape[0]
    written = 0
    with TopKWriter(store_dir, k, vocab, vocab_hash(tokenizer), packed=packed) as writer:
        todo = [r for r in records if r[key_field] not in writer]
        for b in range(0, len(todo), batch_size):
            chunk = todo[b : b + batch_size]
            seqs = [prompt_completion_ids(tokenizer, r["prompt"], r["completion"]) for r in chunk]
            scored = score_topk(model, seqs, k, batch_size)
            for record, (prompt, _), (tokens, ids, lps) in zip(chunk, seqs, scored, strict=True):
                writer.append(record[key_field], tokens, ids, lps, prompt_ids=prompt)
                written += 1
    return written
