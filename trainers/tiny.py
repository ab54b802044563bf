"""A tiny random Qwen2 or Llama model with the SmolLM2 tokenizer, saved as a base-model folder.

Tests and demos need a real architecture and a real chat template, but not real weights: a 2-layer,
64-wide model trains a step in well under a second on CPU and exercises every code path.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.atomic import atomic_folder
from trainers.base_model import resolve_base_model

ARCHITECTURES = ("qwen2", "llama")


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    arch: str = "qwen2",
    hidden_size: int = 64,
    initializer_range: float = 0.3,
    num_layers: int = 2,
    seed: int = 0,
    tokenizer_dir: str | os.PathLike | None = None,
) -> Path:
    """Write a random model + the SmolLM2 tokenizer to `out_dir` (reused when already there) and return it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    if arch not in ARCHITECTURES:
        raise ValueError(f"tiny model arch {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or resolve_base_model(""))
    config_cls = Qwen2Config if arch == "qwen2" else LlamaConfig
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        # Far above the usual 0.02: a 64-wide model with tiny embeddings has near-uniform logits that LoRA
        # moves only slowly, and tests want a loss that visibly falls within a few steps.
        initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with atomic_folder(out, existing="keep") as staging:  # a concurrent test session sees all of it or none
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--arch", choices=ARCHITECTURES, default="qwen2")
    args = parser.parse_args()
    print(build_tiny_model(args.out_dir, arch=args.arch))
