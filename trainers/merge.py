"""`train merge ADAPTER_DIR -o MERGED_DIR`: fold a LoRA adapter into its base model for vLLM serving.

Writes a plain HF folder (merged weights in the base model's dtype + the tokenizer + the adapter's
prompt_format.json, so `format_from` works on the merged folder too) by an atomic rename,
so a crash never leaves a half-written model where a server would load it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from engine.atomic import atomic_folder
from engine.errors import SpecError
from generators.medical.format import find_format
from trainers.base_model import resolve_base_model


def adapter_base(adapter_dir: Path) -> str:
    """The base model folder the adapter was trained on (from adapter_config.json)."""
    from peft import PeftConfig

    if not (adapter_dir / "adapter_config.json").is_file():
        if (adapter_dir / "diseases").is_dir():
            raise SpecError(
                f"{adapter_dir}: a split pair; merge {adapter_dir}/diseases and /reasons one by one"
            )
        raise SpecError(f"{adapter_dir}: no adapter_config.json; give the folder a training run wrote")
    return PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path or ""


def merge_adapter(
    adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, base: str | None = None
) -> Path:
    """Merge `adapter_dir` into `base` (default: the base recorded in the adapter) and save to `out_dir`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, out = Path(adapter_dir), Path(out_dir)
    recorded = adapter_base(adapter_dir)
    base_dir = resolve_base_model(base if base is not None else recorded)
    if out.exists() and any(out.iterdir()):
        raise SpecError(f"-o {out}: folder exists and is not empty; choose a new folder")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
    with atomic_folder(out) as staging:  # `out` is absent or empty (checked above)
        merged.save_pretrained(staging)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(staging)
        if (saved := find_format(adapter_dir)) is not None:  # the merged student is asked as it was trained
            shutil.copy(saved, staging / saved.name)
    return out
