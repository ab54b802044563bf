"""Batches for FIRST: TRL's padding of the tokenised prompt+completion, plus the teacher's top-k rows
aligned with the completion tokens.

Alignment: the stored scored tokens (token_ids[1:]) are matched against the completion tokens of the
tokenised example; over their common prefix, the teacher row for token p is placed at position p - 1
(the student output that predicts token p). `labels` keep only those tokens (-100 elsewhere), so the
trainer's token count (num_items_in_batch) is the number of distilled tokens. Completion tokens past the
first mismatch (a different tokenisation, a truncated teacher record) are not distilled and are counted.

Prompt check: when the store recorded a digest of the prompt ids the teacher saw, an example whose prompt
ids differ (another chat template, system prompt or tokenizer) is not distilled at all, counted in
`prompt_mismatches` and reported once in the log: its teacher rows were computed for another context.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from trainers.first.topk_store import TopKReader, prompt_digest

log = logging.getLogger(__name__)


@dataclass
class Alignment:
    labels: np.ndarray  # [L]: the token where a teacher row applies, else -100
    ids: np.ndarray  # [L, k]: row at position p is over token p + 1
    logprobs: np.ndarray  # [L, k]: -inf where absent
    distilled: int
    completion: int
    prompt_mismatch: bool = False


def align_example(
    input_ids: list[int],
    labels: list[int],
    record: tuple[np.ndarray, np.ndarray, np.ndarray],
    k: int | None = None,
    vocab_size: int | None = None,
    prompt: str | None = None,
) -> Alignment:
    """Place a stored record's rows on a tokenised example (see the module docstring); `prompt` is the
    stored digest of the teacher's prompt ids (None: not checked)."""
    tokens, ids, lps = record
    if k is not None and k < ids.shape[1]:  # keep the best k entries
        best = np.argsort(-lps, axis=1, kind="stable")[:, :k]
        ids, lps = np.take_along_axis(ids, best, 1), np.take_along_axis(lps, best, 1)
    if vocab_size is not None:  # a teacher's padded vocabulary can exceed the student's
        lps = np.where(ids < vocab_size, lps, -np.inf)
        ids = np.where(ids < vocab_size, ids, 0)
    input_ids, labels = np.asarray(input_ids), np.asarray(labels)
    length, width = len(input_ids), ids.shape[1]
    out = Alignment(
        np.full(length, -100), np.zeros((length, width), np.int64), np.full((length, width), -np.inf), 0, 0
    )
    positions = np.flatnonzero(labels != -100)
    out.completion = len(positions)
    if not len(positions):
        return out
    start = int(positions[0])
    if prompt is not None and prompt_digest(input_ids[:start]) != prompt:
        out.prompt_mismatch = True
        return out
    completion, scored = input_ids[start:], tokens[1:]
    n = min(len(completion), len(scored))
    mismatch = np.flatnonzero(completion[:n] != scored[:n])
    matched = int(mismatch[0]) if len(mismatch) else n
    targets = start + np.arange(matched)
    # a target needs an output predicting it (not token 0) and a row the teacher filled
    keep = (targets >= 1) & np.isfinite(lps[:matched]).any(-1)
    targets, rows = targets[keep], np.flatnonzero(keep)
    out.labels[targets] = input_ids[targets]
    out.ids[targets - 1], out.logprobs[targets - 1] = ids[rows], lps[rows]
    out.distilled = len(targets)
    return out


@dataclass
class FirstCollator:
    """Collates examples carrying input_ids, labels (from SFTTrainer's preparation) and the record key."""

    reader: TopKReader
    pad_token_id: int
    k: int | None = None
    vocab_size: int | None = None
    key_field: str = "key"
    pad_to_multiple_of: int | None = None
    distilled: int = field(default=0, init=False)  # running counts, for the alignment report
    completion: int = field(default=0, init=False)
    prompt_mismatches: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._pad = DataCollatorForLanguageModeling(
            self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of
        )

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        aligned = [self.align(example) for example in examples]
        batch = self._pad(
            [
                {"input_ids": e["input_ids"], "labels": a.labels}
                for e, a in zip(examples, aligned, strict=True)
            ]
        )
        length, width = batch["input_ids"].shape[1], aligned[0].ids.shape[1]
        ids = torch.zeros(len(examples), length, width, dtype=torch.long)
        lps = torch.full((len(examples), length, width), -torch.inf)
        for i, a in enumerate(aligned):
            ids[i, : len(a.ids)], lps[i, : len(a.ids)] = torch.from_numpy(a.ids), torch.from_numpy(a.logprobs)
        batch["teacher_ids"], batch["teacher_logprobs"] = ids, lps
        return batch

    def align(self, example: dict[str, Any]) -> Alignment:
        key = example[self.key_field]
        if key not in self.reader:
            raise KeyError(f"record {key!r} has no teacher top-k in {self.reader.dir}; score it first")
        a = align_example(
            example["input_ids"],
            example["labels"],
            self.reader[key],
            self.k,
            self.vocab_size,
            self.reader.prompt_digest(key),
        )
        self.distilled += a.distilled
        self.completion += a.completion
        if a.prompt_mismatch:
            if not self.prompt_mismatches:
                log.warning(
                    "%s: record %r: its prompt ids differ from those the teacher was given (another chat "
                    "template, system prompt or tokenizer); such examples are not distilled",
                    self.reader.dir,
                    key,
                )
            self.prompt_mismatches += 1
        return a
