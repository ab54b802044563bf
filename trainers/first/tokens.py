"""The one tokenisation of a prompt/completion record that FIRST's capture (generators/topk_capture.py),
its trainer and its collator share, so the teacher scores exactly the ids the student trains on.

It is TRL's SFTTrainer prompt-completion tokenisation (trl 1.16, `SFTTrainer._prepare_dataset`): messages
go through the chat template (the prompt with the generation prompt, then prompt + completion), plain text
through the tokenizer with the end-of-sequence token appended to the completion, and the completion starts
where the two tokenisations diverge (`trl.data_utils.common_prefix_length`). Light: no torch or TRL import.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.errors import SpecError


def prompt_completion_ids(tokenizer: Any, prompt: Any, completion: Any) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of one record, conversational (lists of messages) or plain text."""
    if isinstance(prompt, list) != isinstance(completion, list):
        raise SpecError(
            "prompt and completion must both be lists of messages (conversational) or both be text, "
            f"got {type(prompt).__name__} and {type(completion).__name__}"
        )
    if isinstance(prompt, list):

        def render(messages: list, **kw: Any) -> list[int]:
            return list(
                tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"]
            )

        prompt_ids = render(prompt, add_generation_prompt=True)
        full = render(prompt + completion)
    else:
        eos = tokenizer.eos_token or ""
        if not completion.endswith(eos):  # TRL's add_eos step, for plain (non-conversational) records
            completion += eos
        prompt_ids = list(tokenizer(text=prompt)["input_ids"])
        full = list(tokenizer(text=prompt + completion)["input_ids"])
    start = common_prefix_length(prompt_ids, full)
    return full[:start], full[start:]


def common_prefix_length(ids: list[int], other: list[int]) -> int:
    """How many leading ids two sequences share (as trl.data_utils.common_prefix_length)."""
    length = 0
    for a, b in zip(ids, other, strict=False):
        if a != b:
            break
        length += 1
    return length


def tokenise_records(tokenizer: Any, records: Iterable[dict], key_field: str = "key") -> list[dict]:
    """{key, input_ids, labels} per record, completion-only labels as SFTTrainer builds them (untruncated);
    SFTTrainer takes such rows as they are (it only truncates them to max_length)."""
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
