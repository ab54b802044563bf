"""engine/providers/scoring.py, the one teacher top-k scorer: batched or alone, it gives the rows a full
log-softmax gives, and FIRST's score_topk (trainers/first/teacher.py) is that scorer's output as arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from engine.providers.scoring import score_batch
from tests.train_helpers import tiny_model
from trainers.first.teacher import score_topk


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(tiny_model()).eval()


def sequences(vocab: int) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(0)
    shapes = [(5, 3), (1, 6), (9, 1), (4, 4), (2, 8)]  # prompt and completion lengths all differ
    return [(rng.integers(0, vocab, p).tolist(), rng.integers(0, vocab, c).tolist()) for p, c in shapes]


def test_batched_rows_are_the_rows_of_each_sequence_alone(model) -> None:
    seqs = sequences(model.config.vocab_size)
    alone = score_batch(model, seqs, k=5, batch_size=1)
    batched = score_batch(model, seqs, k=5, batch_size=4)
    for (prompt, completion), one, many in zip(seqs, alone, batched, strict=True):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
        expected = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
        top = expected.topk(5, dim=-1)
        for scored in (one, many):
            assert scored.top_ids.shape == (len(completion), 5)
            assert torch.equal(scored.top_ids, top.indices)
            assert torch.allclose(scored.top_logprobs, top.values, atol=1e-4)
            own = expected.gather(1, torch.tensor(completion)[:, None])[:, 0]
            assert torch.allclose(scored.logprobs, own, atol=1e-4)


def test_first_scores_are_the_shared_scorer_rows(model) -> None:
    seqs = sequences(model.config.vocab_size)
    shared = score_batch(model, seqs, k=3, batch_size=2)
    for (prompt, completion), (tokens, ids, lps), scored in zip(
        seqs, score_topk(model, seqs, k=3, batch_size=2), shared, strict=True
    ):
        assert tokens.tolist() == [prompt[-1], *completion] and tokens.dtype == np.int32
        assert np.array_equal(ids, scored.top_ids.numpy()) and ids.dtype == np.int32
        assert np.array_equal(lps, scored.top_logprobs.numpy())
