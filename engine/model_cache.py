"""The one model cache: converted local models (the bundled SmolLM2, any .gguf) and the tiny test models
live here, for generation and training alike. docs/local.md ("The model cache") is its documentation."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "ENGINE_CACHE_DIR"
DEFAULT = Path("~/.cache/distill-engine")


def model_cache_dir() -> Path:
    """`$ENGINE_CACHE_DIR`, else ~/.cache/distill-engine (a run spec may override it with `[run] cache`)."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT).expanduser()
