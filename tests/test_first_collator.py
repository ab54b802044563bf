"""The collator's alignment of stored teacher rows with tokenised examples (no model needed)."""

from __future__ import annotations

import numpy as np
import torch

from trainers.first.collator import FirstCollator, align_example
from trainers.first.topk_store import TopKReader, TopKWriter

PROMPT = [11, 12, 13]
COMPLETION = [21, 22, 23, 24]


def record(scored: list[int]):
    """Row j: token j+1 itself, then 90 + j and 80 + j; log-probs -0.1, -2, -3 (row 1: one absent)."""
    ids = np.array([[t, 90 + j, 80 + j] for j, t in enumerate(scored)])
    lps = np.tile(np.array([-0.1, -2.0, -3.0], dtype=np.float32), (len(scored), 1))
    lps[1:2, 2] = -np.inf
    return np.array([PROMPT[-1], *scored]), ids, lps


def test_row_for_token_p_sits_at_position_p_minus_1():
    a = align_example(PROMPT + COMPLETION, [-100] * 3 + COMPLETION, record(COMPLETION))
    assert a.labels.tolist() == [-100, -100, -100, 21, 22, 23, 24]
    assert a.ids[2:6, 0].tolist() == COMPLETION and (a.ids[6] == 0).all()  # output 2 predicts token 3
    assert np.isinf(a.logprobs[:2]).all() and np.isinf(a.logprobs[6]).all()
    assert a.distilled == a.completion == 4


def test_tokens_past_the_first_mismatch_are_not_distilled():
    a = align_example(PROMPT + COMPLETION, [-100] * 3 + COMPLETION, record([21, 22, 99, 24]))
    assert a.labels.tolist() == [-100, -100, -100, 21, 22, -100, -100]
    assert (a.distilled, a.completion) == (2, 4)
    truncated = align_example(PROMPT + COMPLETION, [-100] * 3 + COMPLETION, record([21]))
    assert (truncated.distilled, truncated.labels.tolist()[3:]) == (1, [21, -100, -100, -100])


def test_best_k_and_student_vocabulary():
    a = align_example(PROMPT + COMPLETION, [-100] * 3 + COMPLETION, record(COMPLETION), k=2, vocab_size=91)
    assert a.ids.shape[1] == 2
    assert a.ids[2].tolist() == [21, 90] and np.isfinite(a.logprobs[2]).all()
    assert a.ids[3].tolist() == [22, 0] and np.isinf(a.logprobs[3, 1])  # id 91 is outside the student's 91


def test_collator_pads_and_stacks_teacher_rows(tmp_path):
    with TopKWriter(tmp_path, 3, 100, "h", packed=False) as writer:
        writer.append("long", *record(COMPLETION))
        writer.append("short", *record(COMPLETION[:2]))
    collator = FirstCollator(TopKReader(tmp_path), pad_token_id=0)
    batch = collator(
        [
            {"key": "long", "input_ids": PROMPT + COMPLETION, "labels": [-100] * 3 + COMPLETION},
            {"key": "short", "input_ids": PROMPT + COMPLETION[:2], "labels": [-100] * 3 + COMPLETION[:2]},
        ]
    )
    assert batch["teacher_ids"].shape == (2, 7, 3) and batch["teacher_logprobs"].dtype == torch.float32
    assert batch["labels"][1].tolist() == [-100, -100, -100, 21, 22, -100, -100]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert torch.isinf(batch["teacher_logprobs"][1, 4:]).all()
    assert (collator.distilled, collator.completion) == (6, 6)


def test_an_example_whose_prompt_differs_from_the_teachers_is_not_distilled(tmp_path, caplog):
    with TopKWriter(tmp_path, 3, 100, "h", packed=False) as writer:
        writer.append("same", *record(COMPLETION), prompt_ids=PROMPT)
        writer.append("other", *record(COMPLETION), prompt_ids=[11, 12, 14])  # the teacher saw another prompt
        writer.append("unknown", *record(COMPLETION))  # no digest recorded: not checked
    collator = FirstCollator(TopKReader(tmp_path), pad_token_id=0)
    example = {"input_ids": PROMPT + COMPLETION, "labels": [-100] * 3 + COMPLETION}
    batch = collator([{"key": key, **example} for key in ("same", "other", "unknown")])
    assert batch["labels"][0].tolist() == batch["labels"][2].tolist() == [-100, -100, -100, *COMPLETION]
    assert (batch["labels"][1] == -100).all() and torch.isinf(batch["teacher_logprobs"][1]).all()
    assert (collator.prompt_mismatches, collator.distilled, collator.completion) == (1, 8, 12)
    assert "'other': its prompt ids differ" in caplog.text
