"""The training methods, registered here and only here: `python -m engine train METHOD SPEC` for each.

A method is TRL's shape: a config dataclass (a TRL config extended with our keys; its fields are the keys
of the spec's `[METHOD]` table and `--set` reaches them) and a `train(spec) -> [summary, ...]` function
that builds a thin TRL trainer and hands it to `trainers.fit.fit` (resume, checkpoint scores, summary).
Its `examples(spec)` yields the rows `train` would learn from, as `--dump-examples` writes them
(trainers/dump.py). A new method is one module holding the config and `train`, a rows function, plus one
line below. Names are imported only when used, so `--help` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from engine.errors import SpecError


@dataclass(frozen=True)
class Method:
    config: str  # "module:ConfigClass"
    train: str  # "module:function", (TrainSpec) -> list of summaries
    rows: str  # "module:function", (TrainSpec) -> the training rows, for --dump-examples
    help: str  # one line for `train --help`

    def config_class(self) -> type:
        return _load(self.config)

    def run(self, spec: Any) -> list[dict[str, Any]]:
        return _load(self.train)(spec)

    def examples(self, spec: Any) -> Iterator[dict[str, Any]]:
        return _load(self.rows)(spec)


METHODS: dict[str, Method] = {
    "sft": Method(
        config="trainers.sft:SftConfig",
        train="trainers.sft:train_sft",
        rows="trainers.dump:sft_rows",
        help="LoRA SFT on answer records",
    ),
    "dpo": Method(
        config="trainers.dpo:DpoConfig",
        train="trainers.dpo:train_dpo",
        rows="trainers.dump:dpo_rows",
        help="DPO on preference pairs",
    ),
    "first": Method(
        config="trainers.first.trainer:FirstConfig",
        train="trainers.first.trainer:train_first",
        rows="trainers.dump:first_rows",
        help="FIRST top-k distillation",
    ),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise SpecError(f"unknown training method {name!r} (known: {', '.join(METHODS)})") from None


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
