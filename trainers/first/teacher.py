"""Teacher-forced top-k scoring with a local transformers model: the FIRST targets of prompt/completion
records, tokenised by trainers/first/tokens.py (as TRL's SFTTrainer does), written into a top-k store.
A served teacher fills the same store through the engine's `topk_capture` stage instead."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from engine.providers.scoring import score_batch
from trainers.first.tokens import prompt_completion_ids
from trainers.first.topk_store import TopKWriter, vocab_hash


def score_topk(
    model: Any, sequences: Sequence[tuple[list[int], list[int]]], k: int = 5, batch_size: int = 8
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per (prompt ids, completion ids): token_ids[T+1] (last prompt token + completion), top-k ids and
    log-probs [T, k], row j over token_ids[j + 1]; scored by the engine's one scorer
    (engine/providers/scoring.py), the one the local provider answers a capture stage with."""
    model.eval()
    scored = score_batch(model, sequences, k, batch_size)
    return [
        (
            np.asarray([prompt[-1], *completion], dtype=np.int32),
            s.top_ids.numpy().astype(np.int32),
            s.top_logprobs.numpy(),
        )
        for (prompt, completion), s in zip(sequences, scored, strict=True)
    ]


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
