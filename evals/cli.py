"""The `eval` command: score an answer file (optionally against gold) and print a table or JSON.

`add_eval_command(subparsers)` registers it on a parent CLI (`python -m engine eval ...`); the flags
come from EvalConfig's fields, so defaults and help text have one source. Standalone:
`python -m evals.cli eval PRED.jsonl --gold GOLD.jsonl [--json]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from engine.atomic import write_json_atomic
from engine.errors import SpecError
from engine.history import EVAL
from engine.overrides import literal, split_item
from engine.spec_errors import SpecErrors
from engine.stage_ref import resolve_stage
from evals.metrics import EvalConfig
from evals.report import evaluate, format_table
from evals.submission import load_answers


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for name, info in EvalConfig.model_fields.items():
        flag = _flag(name)
        help_text = f"{info.description} (default: {info.default})"
        if name == "weights":
            parser.add_argument(
                flag, dest="weights", action="append", metavar="METRIC=W",
                help=f"weight of a metric in the combined score; repeat; replaces the default {info.default}",
            )  # fmt: skip
        elif info.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif get_origin(info.annotation) is Literal:
            parser.add_argument(flag, choices=get_args(info.annotation), default=None, help=help_text)
        else:
            parser.add_argument(flag, type=info.annotation, default=None, help=help_text)


def add_eval_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register `eval` on an argparse subparsers object; the parsed args carry `func=main_eval`."""
    parser = subparsers.add_parser(
        "eval",
        help="score diagnosis answers (a file or SPEC:STAGE): diseases and reason vs gold, grounding, stats",
        description="Score an answer file (engine records or the official submission format), or a run's "
        "stage as SPEC:STAGE, e.g. `eval runs/x/spec.toml:predict --gold gold.jsonl`: the report is then "
        "also stored beside the stage's records, where `engine runs` shows it.",
    )
    parser.add_argument(
        "pred",
        metavar="PRED.jsonl|SPEC:STAGE",
        help="answers (fields id, diseases, reason[, feature_content]), or SPEC:STAGE: a run's kept records",
    )
    parser.add_argument(
        "--as",
        dest="run_name",
        metavar="NAME",
        help="with SPEC:STAGE: the named run (`engine run SPEC --as NAME`) instead of the spec's own output",
    )
    parser.add_argument("--gold", metavar="GOLD.jsonl", help="expert answers, joined to PRED by id")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    _add_config_flags(parser)
    parser.set_defaults(func=main_eval)
    return parser


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """EvalConfig from the flags the user gave; the rest keep the model's defaults."""
    options = {
        name: getattr(args, name) for name in EvalConfig.model_fields if getattr(args, name, None) is not None
    }
    if "weights" in options:
        items = (
            split_item(item, "--weight", "METRIC=NUMBER", "diseases.f1=0.5") for item in options["weights"]
        )
        options["weights"] = {metric: literal(text) for metric, text in items}
    try:
        return EvalConfig(**options)
    except ValidationError as exc:
        raise SpecErrors(given={(name,): _flag(name) for name in options}).from_validation(exc) from None


def _flag(name: str) -> str:
    """The flag of an EvalConfig field."""
    return "--weight" if name == "weights" else "--" + name.replace("_", "-")


def main_eval(args: argparse.Namespace) -> int:
    """Run the evaluation the parsed args describe; returns the exit status (2 on bad input)."""
    try:
        config = config_from_args(args)
        stage = resolve_stage(args.pred, args.run_name)  # `spec.toml:STAGE` reads a run's kept records
        predictions = load_answers(stage.records() if stage else args.pred)
        gold = load_answers(args.gold) if args.gold else None
        report = evaluate(predictions, gold, config, labels=(args.pred, args.gold or "gold"))
    except SpecError as err:
        print(f"eval: {err}", file=sys.stderr)
        return 2
    if stage:
        write_json_atomic(stage.folder / EVAL, report)  # `engine runs` shows it
    print(json.dumps(report, ensure_ascii=False) if args.json else format_table(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evals.cli")
    add_eval_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
