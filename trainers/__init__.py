"""Training entry points on top of TRL: LoRA SFT (joint or split), DPO, FIRST, adapter merge (docs/train.md).

Public API (imported lazily, so `import trainers` costs nothing):
  load_spec(path, overrides, command)          trainers.spec     the train spec (TOML), paths absolute
  METHODS                                      trainers.methods  the training methods, registered once
  train_sft(spec) / train_dpo(spec)            trainers.sft/.dpo [one summary per adapter]
  merge_adapter(adapter_dir, out_dir)          trainers.merge    merged model + tokenizer
  build_pairs(teacher, student)                trainers.pairs    DPO pairs from engine records
  resolve_base_model(path_or_empty)            trainers.base_model
  build_tiny_model(out_dir)                    trainers.tiny     random 2-layer model for tests
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# Training never downloads: every model is a local folder (the bundled one is converted locally).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_EXPORTS = {
    "load_spec": "trainers.spec",
    "METHODS": "trainers.methods",
    "train_sft": "trainers.sft",
    "train_dpo": "trainers.dpo",
    "merge_adapter": "trainers.merge",
    "build_pairs": "trainers.pairs",
    "resolve_base_model": "trainers.base_model",
    "build_tiny_model": "trainers.tiny",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainers' has no attribute {name!r}")
