"""`train METHOD|merge` commands, one per registered method (trainers/methods.py): `add_train_commands`
plugs them into `python -m engine`; this module also runs on its own as `python -m trainers.cli sft SPEC`
(and under `accelerate launch -m ...`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from engine.errors import SpecError
from trainers.ranks import is_main_process


def _add_subcommands(sub: Any) -> None:
    from trainers.methods import METHODS

    for name, method in METHODS.items():
        cmd = sub.add_parser(name, help=method.help, description=method.help)
        cmd.add_argument(
            "spec", type=Path, help=f"train spec (TOML) with a [{name}] table; see docs/train.md"
        )
        cmd.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help=f"override a spec field (TOML literal; dotted keys; bare method keys go to [{name}])",
        )  # fmt: skip
        cmd.add_argument(
            "--dump-examples", type=Path, metavar="FILE",
            help="write the exact rendered training rows (JSONL, with each source id) to FILE ('-': stdout) "
            "and exit without training",
        )  # fmt: skip
        cmd.set_defaults(func=run_train, train_command=name)
    merge = sub.add_parser("merge", help="merge an adapter into its base model (for vLLM serving)")
    merge.add_argument("adapter_dir", type=Path)
    merge.add_argument("-o", "--output", type=Path, required=True, help="new folder for the merged model")
    merge.add_argument(
        "--base", default=None, help="base model folder (default: the one the adapter records)"
    )
    merge.set_defaults(func=run_train, train_command="merge")


def add_train_commands(subparsers: Any) -> None:
    """Register `train METHOD|merge` under an argparse sub-parser collection (handler: `args.func`)."""
    train = subparsers.add_parser("train", help="train with TRL (sft, dpo, first) or merge an adapter")
    _add_subcommands(train.add_subparsers(dest="train_command", required=True))


def run_train(args: argparse.Namespace) -> int:
    # Heavy imports here, so `python -m engine --help` stays fast.
    from trainers.fit import describe

    main = is_main_process()
    log = logging.getLogger("trainers")
    if not log.handlers:  # resume points, cut answers and dropped examples are worth seeing on the terminal
        log.addHandler(logging.StreamHandler())
        # once per run, not once per process: the other ranks only report errors
        log.setLevel(logging.INFO if main else logging.ERROR)

    if args.train_command == "merge":
        from trainers.merge import merge_adapter

        print(f"merged model written to {merge_adapter(args.adapter_dir, args.output, args.base)}")
        return 0
    from trainers.methods import get_method
    from trainers.spec import load_spec

    try:
        spec = load_spec(args.spec, args.overrides, args.train_command)
        method = get_method(args.train_command)
        if args.dump_examples:
            return _dump(method.examples(spec), args.dump_examples)
        summaries = method.run(spec)
    except SpecError:
        if main:
            raise  # one `error: ...` line (the CLI prints it), not one per process
        raise SystemExit(2) from None
    if main:
        for summary in summaries:
            print(describe(summary))
    return 0


def _dump(rows: Any, path: Path) -> int:
    from trainers.dump import dump_rows

    try:
        print(dump_rows(rows, path), file=sys.stderr)
    except BrokenPipeError:  # `... --dump-examples - | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.cli", description=__doc__)
    _add_subcommands(parser.add_subparsers(dest="train_command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
