"""Stage types. Each module registers one generator; they are imported on first use by name."""

from __future__ import annotations

import importlib

from generators.base import REGISTRY, Generator

# name -> module that registers it; imported lazily so `engine status` never loads torch.
BUILTIN = {
    "template": "generators.template",
    "topk_capture": "generators.topk_capture",
    "diagnose": "generators.medical.diagnose",
    "two_stage": "generators.medical.two_stage",
    "label_diseases": "generators.medical.label_diseases",
    "label_reasons": "generators.medical.label_reasons",
    "self_instruct": "generators.medical.self_instruct",
    "preference_pairs": "generators.medical.preference_pairs",
    "predict": "generators.medical.predict",
    "rewrite_record": "generators.medical.rewrite_record",
}


def get_generator(name: str) -> type[Generator]:
    if name not in REGISTRY and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in REGISTRY:
        raise KeyError(f"unknown generator {name!r} (known: {', '.join(sorted(BUILTIN))})")
    return REGISTRY[name]


__all__ = ["BUILTIN", "REGISTRY", "Generator", "get_generator"]
