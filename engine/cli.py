"""`python -m engine ...`: run, status, export and filter replay; other commands come from their packages.

Exit codes: 0 done; 1 stopped early (fatal provider error, breaker, budget) or an I/O error; 2 a spec or
input error; 3 every item of the run ended but some failed; 130 / 143 stopped by SIGINT / SIGTERM
(resumable); 141 the output pipe was closed (`| head`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from engine.errors import RunStopped, SpecError
from engine.plugins import add_plugins, missing_dependency

EXIT_STOPPED, EXIT_SPEC, EXIT_FAILED_ITEMS, EXIT_BROKEN_PIPE = 1, 2, 3, 141

STANDALONE_FILTERS = ("dedupe", "leakage")
EXPORTERS = {
    "sft": "trainers.data:export_sft",
    "dpo": "trainers.data:export_dpo",
    "submission": "evals.submission:export_submission",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description=__doc__,
        epilog="also: `runs note NAME --score S [--text T]` records a run's leaderboard score or a note; "
        "`filter dedupe|leakage IN.jsonl -o OUT.jsonl` filters a file without a spec. "
        "`COMMAND --help` tells more.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a spec, or resume it after any crash")
    run.add_argument("spec", type=Path)
    run.add_argument("--shard", default="1/1", help="I/N: run the I-th of N disjoint slices (1-based)")
    run.add_argument("--stage", action="append", help="run only this stage (repeatable)")
    run.add_argument("--retry-failed", action="store_true", help="request again the items that failed")
    run.add_argument("--quiet", action="store_true", help="no progress bar, and only warnings logged")
    run.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="S",
        help="when stderr is not a terminal: a progress line every S seconds (default 10)",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key (TOML value; a stage by its name: `stages.predict.k=6`); needs --as",
    )
    _add_run_name(run, "name this run: it writes OUT-NAME/ beside the spec's output and records its --set")
    run.set_defaults(handler=cmd_run)

    status = sub.add_parser("status", help="per stage: kept / rejected / failed / pending, tokens, cost")
    status.add_argument("spec", type=Path)
    status.add_argument("--json", action="store_true")
    _add_run_name(status)
    status.set_defaults(handler=cmd_status)

    export = sub.add_parser("export", help="write a stage's kept records in a training or submission format")
    export.add_argument("spec", type=Path)
    export.add_argument("--stage", required=True)
    export.add_argument("--format", default="jsonl", choices=["jsonl", *EXPORTERS])
    export.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")
    export.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an exporter option, e.g. `--set reason_separator=newline --set disease_numbering=false`",
    )
    _add_run_name(export)
    export.set_defaults(handler=cmd_export)

    replay = sub.add_parser(
        "filter",
        help="re-run the filter chain over stored answers (no requests); also `filter dedupe|leakage`",
    )
    replay.add_argument("spec", type=Path)
    replay.add_argument("--stage", action="append", help="replay only this stage (repeatable)")
    _add_run_name(replay)
    replay.set_defaults(handler=cmd_replay)

    runs = sub.add_parser(
        "runs",
        help="the run history: one row per run; `runs note NAME --score S` records a leaderboard score",
        description="The run history: one row per run found under DIR, oldest first.",
        epilog="record a score or a note:\n" + _note_parser().format_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runs.add_argument("dir", nargs="?", type=Path, default=Path("runs"), help="folder searched for runs")
    runs.add_argument(
        "--only", action="append", metavar="GLOB", help="runs whose name matches, e.g. 'v1*' (repeatable)"
    )
    runs.add_argument(
        "--width", type=int, help="table width in characters (default: the terminal's, 120 when piped)"
    )
    runs.add_argument("--json", action="store_true")
    runs.add_argument("--plot", type=Path, help="draw score and statistics per run into this PNG")
    runs.add_argument("--diff", nargs=2, metavar=("A", "B"), help="compare two runs' answers on the same ids")
    runs.add_argument(
        "--field", action="append", help="with --diff: the fields compared (default: all that differ)"
    )
    runs.set_defaults(handler=cmd_runs)

    add_plugins(sub)
    return parser


def _prog() -> str:
    """`engine` when run as the console script, else `python -m engine`."""
    return "engine" if Path(sys.argv[0]).name == "engine" else "python -m engine"


def _add_run_name(parser: argparse.ArgumentParser, help_text: str = "") -> None:
    parser.add_argument(
        "--as",
        dest="run_name",
        metavar="NAME",
        help=help_text or "the named run (`engine run SPEC --as NAME`) instead of the spec's own output",
    )


# peft asks transformers a question it deprecated each time it wraps a model: every LoRA load would print
# their FutureWarning to our users, who can do nothing about it.
QUIET_WARNINGS = ["`is_gradient_checkpointing` is deprecated"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    try:
        if argv[:2] == ["runs", "note"]:
            return cmd_note(argv[2:])
        if argv[:1] == ["filter"] and argv[1:2] and argv[1] in STANDALONE_FILTERS:
            from filters.standalone import main as filter_main

            return filter_main(argv[1:]) or 0
        args = build_parser().parse_args(argv)
        handler = getattr(args, "handler", None) or args.func  # plugins set `func`
        code = handler(args) or 0
        sys.stdout.flush()  # a closed pipe shows up here, not at exit
        return code
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SPEC
    except ModuleNotFoundError as exc:
        missing = missing_dependency(exc, argv[0] if argv else "")
        if missing is None:
            raise
        print(f"error: {missing}", file=sys.stderr)
        return EXIT_SPEC
    except RunStopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    except BrokenPipeError:  # `engine status S | head -1`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a folder where a file was expected, no permission
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_STOPPED


def _load(args: argparse.Namespace) -> Any:
    """The spec, or the named run `--as NAME` (engine/named_runs.py); only `run` takes `--set`."""
    from engine.named_runs import load_run

    sets = getattr(args, "set", []) if args.command == "run" else []
    return load_run(args.spec, args.run_name, sets, create=args.command == "run")


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise SpecError(f"--shard {text!r}: expected I/N, e.g. 2/8") from None
    if not 1 <= index <= count:
        raise SpecError(f"--shard {text!r}: I must be between 1 and N")
    return index - 1, count


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    from engine.pipeline import Pipeline
    from engine.progress import setup_logging

    loaded = _load(args)
    setup_logging(logging.WARNING if args.quiet else logging.INFO)
    pipeline = Pipeline(
        loaded,
        shard=_shard(args.shard),
        stages=args.stage,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
        progress_every_s=args.progress_every,
    )
    manifest = asyncio.run(pipeline.run())
    counts = {k: sum(r.counts[k] for r in pipeline.reports.values()) for k in ("failed", "pending")}
    if pipeline.signalled:
        message = f"{counts['pending']} items pending; run the same command to resume"
        print(f"{pipeline.stop_reason}: {message}", file=sys.stderr)
        return 128 + pipeline.signalled
    if pipeline.stop_reason:
        raise RunStopped(pipeline.stop_reason)
    print(_status_table(manifest) if not args.quiet else f"{manifest['name']}: {manifest['status']}")
    if counts["pending"]:
        print(f"incomplete: {counts['pending']} items pending; run the same command again", file=sys.stderr)
        return EXIT_STOPPED
    if counts["failed"]:
        total = sum(sum(r.counts.values()) for r in pipeline.reports.values())
        print(
            f"{counts['failed']} of {total} items failed (see {loaded.out_dir}/<stage>/failed/); "
            f"`run --retry-failed` asks for them again",
            file=sys.stderr,
        )
        return EXIT_FAILED_ITEMS
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from engine.pipeline import Pipeline

    loaded = _load(args)
    manifest = asyncio.run(Pipeline(loaded, mode="status", progress=False).run())
    if args.json:
        sys.stdout.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(_status_table(manifest))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from engine.pipeline import Pipeline

    loaded = _load(args)
    manifest = asyncio.run(Pipeline(loaded, mode="replay", stages=args.stage, progress=False).run())
    print(_status_table(manifest))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engine.atomic import atomic_output
    from engine.derived import lagging, stale_note
    from engine.jsonl import write_jsonl
    from engine.overrides import parse_overrides
    from engine.store import read_outcome

    loaded = _load(args)
    loaded.stage(args.stage)
    if args.output is not None and args.output.is_dir():
        example = args.output / f"{args.stage}.jsonl"
        raise SpecError(f"-o {args.output}: is a folder; give a file name, e.g. -o {example}")
    stage_dir = loaded.out_dir / args.stage
    if not (stage_dir / "kept").is_dir():
        again = f" --as {args.run_name}" if args.run_name else ""
        raise SpecError(
            f"{stage_dir}: no kept records yet; run `python -m engine run {args.spec}{again}` first"
        )
    crashed, running = lagging(stage_dir, loaded.out_dir)
    if crashed:  # a killed run's answers are not filtered yet: exporting now would silently miss them
        again = f" --as {args.run_name}" if args.run_name else ""
        note = stale_note(stage_dir, loaded.out_dir, f"python -m engine filter {args.spec}{again}")
        raise SpecError(f"{stage_dir}: {note}; then export again")
    if running:
        print(
            f"note: {running} is writing {args.stage}: exporting the records committed so far",
            file=sys.stderr,
        )
    records = read_outcome(stage_dir, "kept")
    if args.format == "jsonl":
        write = write_jsonl
    else:
        module, function = EXPORTERS[args.format].split(":")
        write = getattr(importlib.import_module(module), function)
    options = parse_overrides(args.set)
    _check_options(write, options, args.format)
    if args.output is None:
        count = write(records, sys.stdout.buffer, **options)
    else:
        with atomic_output(args.output) as out:
            count = write(records, out, **options)
    print(f"wrote {count} records ({args.format}) to {args.output or 'stdout'}", file=sys.stderr)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from engine import history
    from engine.runs_table import format_table

    if args.diff:
        a, b = (history.find_run(args.dir, name) for name in args.diff)
        report = history.diff(a, b, fields=args.field)
        print(orjson.dumps(report).decode() if args.json else history.format_diff(report))
        return 0
    rows = history.table(history.select(history.find_runs(args.dir), args.only))
    if args.plot and rows:
        history.plot(rows, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    width = args.width or (shutil.get_terminal_size((120, 24)).columns if sys.stdout.isatty() else 120)
    print(orjson.dumps(rows).decode() if args.json else format_table(rows, width=width))
    return 0


def _note_parser() -> argparse.ArgumentParser:
    # `runs note` is dispatched before argparse (`runs DIR` takes a positional); `runs --help` shows this
    parser = argparse.ArgumentParser(
        prog=f"{_prog()} runs note", description="Record a run's leaderboard score or a free note."
    )
    parser.add_argument(
        "name", help="the run's name (its [run].name or --as NAME) or its output folder's name"
    )
    parser.add_argument("--score", type=float, help="the leaderboard score of this run's submission")
    parser.add_argument("--text", help="a free note, e.g. what changed")
    parser.add_argument("--dir", type=Path, default=Path("runs"), help="folder searched for runs")
    return parser


def cmd_note(argv: list[str]) -> int:
    from engine import history

    args = _note_parser().parse_args(argv)
    run = history.note(args.dir, args.name, args.score, args.text)
    print(f"noted {run.name}: {run.notes}")
    return 0


def _check_options(write: Callable[..., int], options: dict[str, Any], fmt: str) -> None:
    """Unknown `--set` options are named here; an exporter taking **options checks its own."""
    params = list(inspect.signature(write).parameters.values())[2:]  # after (records, out)
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind is p.KEYWORD_ONLY or p.default is not p.empty]
    for key in options:
        if key not in known:
            takes = f"its options: {', '.join(known)}" if known else "it takes no --set options"
            raise SpecError(f"export --format {fmt}: unknown option {key!r} ({takes})")


def _status_table(manifest: dict[str, Any]) -> str:
    rows = [f"run {manifest['name']}: {manifest['status']}"]
    rows.append(f"{'stage':<20}{'kept':>8}{'rejected':>10}{'failed':>8}{'pending':>9}")
    for name, stage in manifest["stages"].items():
        c = stage["counts"]
        rows.append(f"{name:<20}{c['kept']:>8}{c['rejected']:>10}{c['failed']:>8}{c['pending']:>9}")
        for reason, n in stage["reasons"].items():
            rows.append(f"    rejected by {reason}: {n}")
        rows.extend(f"    note: {note}" for note in stage.get("notes", []))
        for key, value in stage.get("stats", {}).items():
            rows.append(f"    {key}: {value:.2f}" if isinstance(value, float) else f"    {key}: {value}")
    for name, p in manifest["providers"].items():
        tokens = p.get("prompt_tokens", 0) + p.get("completion_tokens", 0)
        if "requests" in p:
            rows.append(
                f"provider {name} ({p['model']}): {p['requests']} requests, {tokens} tokens, "
                f"{p.get('rate_limited', 0)} 429s, {p.get('retries', 0)} retries, cost {p.get('cost', 0):.4f}"
            )
    return "\n".join(rows)
