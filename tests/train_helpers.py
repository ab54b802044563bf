"""Helpers for the trainer tests: the tiny random model, the fixture records, a spec writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.jsonl import read_jsonl
from engine.model_cache import model_cache_dir
from trainers.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
RECORDS = DATA / "train_records.jsonl"
TEST_SET = DATA / "train_test_set.jsonl"
PROMPTS = DATA / "train_prompts"  # short prompts: the tiny model's steps stay cheap


def tiny_model() -> Path:
    """The 2-layer, 64-wide random Qwen2 with the SmolLM2 tokenizer (built once, cached, seeded)."""
    return build_tiny_model(model_cache_dir() / "tiny-qwen2-h64-l2")


def records() -> list[dict[str, Any]]:
    return list(read_jsonl(RECORDS))


def write_spec(folder: Path, body: str = "", *, base: Path | None = None, name: str = "train.toml") -> Path:
    """A train spec on the tiny model and the fixture records; `body` adds tables (TOML)."""
    base = tiny_model() if base is None else base
    path = folder / name
    path.write_text(
        f'base_model = "{base}"\n'
        f"[data]\n"
        f'train = ["{RECORDS}"]\n'
        f'prompts_dir = "{PROMPTS}"\n'
        f"validation_fraction = 0.25\n"
        f"[lora]\nr = 8\nalpha = 16\ndropout = 0.0\n" + body,
        encoding="utf-8",
    )
    return path


# [sft]/[dpo] keys that keep a tiny run fast and deterministic on CPU.
FAST = "activation_checkpointing = false\nper_device_train_batch_size = 4\nmax_length = 512\n"


def logits(model: Any, tokenizer: Any, text: str = "性别: 男\n主诉: 发热") -> torch.Tensor:
    batch = tokenizer(text, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def answer_logprob(model: Any, tokenizer: Any, examples: list[dict[str, Any]]) -> dict[str, float]:
    """An offline-metric hook for the tests: mean log-prob of the first validation answer's tokens."""
    example = examples[0]
    prompt = tokenizer.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
    answer = example["completion"][0]["content"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    picked = logprobs[len(prompt_ids) - 1 :].gather(1, ids[0, len(prompt_ids) :, None])
    return {"answer_logprob": float(picked.mean()), "hook_examples": float(len(examples))}
