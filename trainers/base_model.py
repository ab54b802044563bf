"""Where the base model of a training run lives: a local HF folder, or the bundled SmolLM2 converted once.

The conversion itself belongs to the local provider (engine/providers/local_model.py); training shares
its cache, so the bundled GGUF is converted once per machine for generation and training alike.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import Fatal, SpecError
from engine.model_cache import model_cache_dir
from engine.providers.local_model import resolve_model


def resolve_base_model(path_or_empty: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A folder `from_pretrained` can load: the given local folder, or ("") the bundled one, converted."""
    if str(path_or_empty):
        folder = Path(path_or_empty)
        if not (folder / "config.json").is_file():
            raise SpecError(
                f"base_model {str(folder)!r}: not a model folder (no config.json); give a local HF folder"
            )
        return folder
    try:
        return resolve_model("", Path(cache_dir) if cache_dir else model_cache_dir())
    except Fatal as exc:
        raise SpecError(str(exc)) from None
