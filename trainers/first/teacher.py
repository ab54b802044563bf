"""Teacher-forced top-k scoring with a local transformers model: the FIRST targets of prompt/completion
records, tokenised exactly as TRL's SFTTrainer tokenises them, written into a top-k store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from trl.data_utils import common_prefix_length

from trainers.first.topk_store import TopKWriter, vocab_hash


def prompt_completion_ids(tokenizer: Any, prompt: Any, completion: Any) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) as TRL renders a prompt/completion record (chat template or plain)."""
    if isinstance(prompt, list):

        def render(messages: list, **kw: Any) -> list[int]:
            return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"]

        prompt_ids = render(prompt, add_generation_prompt=True)
        full = render(prompt + completion)
    else:
        prompt_ids = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + completion)["input_ids"]
    start = common_prefix_length(prompt_ids, full)
    return full[:start], full[start:]


def tokenise_records(tokenizer: Any, records: Iterable[dict], key_field: str = "key") -> list[dict]:
    """{key, input_ids, labels} per record, completion-only labels as SFTTrainer builds them (untruncated)."""
    out = []
    for record in records:
        prompt, completion = prompt_completion_ids(tokenizer, record["prompt"], record["completion"])
        out.append(
            {
                key_field: record[key_field],
                "input_ids": prompt + completion,
                "labels": [-100] * len(prompt) + completion,
            }
        )
    return out


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
            for record, (tokens, ids, lps) in zip(chunk, score_topk(model, seqs, k, batch_size), strict=True):
                writer.append(record[key_field], tokens, ids, lps)
                written += 1
    return written
