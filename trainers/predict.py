"""Prediction with trained adapters through transformers `generate` (greedy), for tests, demos and
generators that run a split-mode student: `predict_split` asks the diseases adapter first, then the
reasons adapter with the predicted diseases in its prompt."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from engine.types import Record
from trainers.data import Formatter

SPLIT_ADAPTERS = ("diseases", "reasons")


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    max_new_tokens: int = 256,
    batch_size: int = 8,
) -> list[str]:
    """Greedy answers to chat prompts, batched with left padding."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [
                tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                for p in prompts[start : start + batch_size]
            ]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                model.device
            )
            with torch.no_grad():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = out[:, batch["input_ids"].shape[1] :]
            answers.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return answers


def parse_answer(text: str) -> dict[str, Any] | None:
    """The JSON object in an answer (first '{' to last '}'), or None."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        value = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def load_split(
    base: str | os.PathLike, adapters_dir: str | os.PathLike, dtype: str = "auto"
) -> tuple[Any, Any]:
    """(model, tokenizer): the base with both split adapters loaded, named "diseases" and "reasons"."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainers.base_model import resolve_base_model
    from trainers.modeling import DTYPES, load_tokenizer

    folder = resolve_base_model(base)
    root = Path(adapters_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES.get(dtype, "auto"))
    model = PeftModel.from_pretrained(model, root / "diseases", adapter_name="diseases")
    model.load_adapter(root / "reasons", adapter_name="reasons")
    return model.eval(), load_tokenizer(folder)


def predict_split(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    formatter: Formatter | None = None,
    max_new_tokens: int = 256,
) -> list[Record]:
    """Each record with the predicted label and reasons, plus `raw` (both answers as generated).

    An answer that is not JSON keeps its raw text as the label, so the reasons step still sees what the
    first model said.
    """
    formatter = formatter or Formatter.default()
    label_key, reason_key = formatter.data.label_field, formatter.data.reason_field
    model.set_adapter("diseases")
    first = generate(model, tokenizer, [formatter.prompt(r, "diseases") for r in records], max_new_tokens)
    labels = [(parse_answer(t) or {}).get(label_key, t.strip()) for t in first]
    model.set_adapter("reasons")
    prompts = [formatter.prompt(r, "reasons", label=label) for r, label in zip(records, labels, strict=True)]
    second = generate(model, tokenizer, prompts, max_new_tokens)
    results = []
    for record, label, text_1, text_2 in zip(records, labels, first, second, strict=True):
        reasons = (parse_answer(text_2) or {}).get(reason_key, text_2.strip())
        results.append(
            {**record, label_key: label, reason_key: reasons, "raw": {"diseases": text_1, "reasons": text_2}}
        )
    return results
