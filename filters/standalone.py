"""Filters run on a whole JSONL file, outside a pipeline: `engine filter dedupe` and `engine filter leakage`.

`dedupe_jsonl` / `leakage_jsonl` are the functions; `add_commands(subparsers)` registers the argparse
subcommands (each sets `func(args) -> exit code`). The input is read twice: once to check every line
(so a bad line stops the run before anything is written) and to learn boilerplate, once to filter.
Outputs are written to temporary files and renamed at the end, so an earlier output is never half
overwritten. Also runnable as `python -m filters.standalone {dedupe,leakage} ...`.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError
from tqdm import tqdm

from engine.atomic import atomic_output
from engine.errors import SpecError
from engine.jsonl import numbered_jsonl, read_jsonl
from engine.spec_errors import flag_errors
from filters.boilerplate import Boilerplate
from filters.leakage import LeakageConfig, LeakageFilter
from filters.records import field_text
from filters.rouge import RougeDedupe, RougeDedupeConfig


@dataclass
class Summary:
    """What a standalone run did; `line()` is the one-line summary the CLI prints."""

    command: str
    source: Path
    read: int
    kept: int
    output: Path
    dropped_path: Path
    seconds: float
    stats: dict[str, Any]

    @property
    def dropped(self) -> int:
        return self.read - self.kept

    def line(self) -> str:
        extra = ""
        if "core_changed" in self.stats:
            extra += f"; core changed {self.stats['core_changed']} decisions"
        for name, counts in self.stats.get("removed", {}).items():
            extra += f"; {name}: " + (", ".join(f"{why} {n}" for why, n in counts.items()) or "none")
        return (
            f"{self.command} {self.source}: {self.read} read, {self.kept} kept -> {self.output}, "
            f"{self.dropped} dropped -> {self.dropped_path} ({self.seconds:.1f} s){extra}"
        )


def _scan(path: Path, fields: list[str]) -> Iterator[str]:
    """Every record's compared text, checking each line (JSON object, fields present)."""
    for lineno, record in numbered_jsonl(path):
        yield field_text(record, fields, where=f"{path}:{lineno}")


def _run(
    command: str,
    in_path: Path,
    out_path: Path,
    dropped_path: Path | None,
    decide: Callable[[dict[str, Any]], dict[str, Any] | None],
    total: int,
    progress: bool,
) -> tuple[int, int, Path, float]:
    """Stream `in_path` through `decide` (None: keep; else the side-file entry) into the two outputs."""
    dropped_path = dropped_path or out_path.with_name(out_path.name.removesuffix(".jsonl") + ".dropped.jsonl")
    start = time.perf_counter()
    read = kept = 0
    with atomic_output(out_path) as keep_fh, atomic_output(dropped_path) as drop_fh:
        bar = tqdm(total=total, unit="rec", desc=command, disable=None if progress else True, file=sys.stderr)
        for record in read_jsonl(in_path):
            read += 1
            entry = decide(record)
            if entry is None:
                kept += 1
                keep_fh.write(orjson.dumps(record) + b"\n")
            else:
                drop_fh.write(
                    orjson.dumps({**entry, "record": record}, option=orjson.OPT_NON_STR_KEYS) + b"\n"
                )
            bar.update()
        bar.close()
    return read, kept, dropped_path, time.perf_counter() - start


def dedupe_jsonl(
    in_path: str | Path,
    out_path: str | Path,
    *,
    fields: list[str] | None = None,
    threshold: float | None = None,
    dropped_path: str | Path | None = None,
    seed: str | Path | None = None,
    core: bool = False,
    progress: bool = True,
) -> Summary:
    """Keep, in input order, every record whose ROUGE-L F1 against all records kept before it (and the
    seed pool) is at most `threshold`; the others go to the side file with the id they duplicate."""
    in_path, out_path = Path(in_path), Path(out_path)
    options: dict[str, Any] = {"core": core}
    if fields:
        options["fields"] = fields
    if threshold is not None:
        options["threshold"] = threshold
    if seed is not None:
        options["seed"] = str(seed)
    config = RougeDedupeConfig(**options)
    counted: list[int] = []
    texts = _counting(_scan(in_path, config.fields), counted)  # checks every line before anything is written
    boilerplate = None
    if core:  # the corpus it runs on (and the seed pool) defines the boilerplate
        seeds = _scan(Path(config.seed), config.seed_fields or config.fields) if config.seed else iter(())
        boilerplate = Boilerplate.learn(itertools.chain(texts, seeds), share=config.boilerplate_share)
    else:
        for _ in texts:
            pass
    dedupe = RougeDedupe(config, boilerplate=boilerplate)

    def decide(record: dict[str, Any]) -> dict[str, Any] | None:
        match = dedupe.decide(record)
        if match is None:
            return None
        origin, dup_id = match.id
        return {
            "filter": "rouge_dedupe",
            "duplicate_of": dup_id,
            "seed": origin == "seed",
            "score": match.score,
        }

    read, kept, dropped, seconds = _run(
        "dedupe", in_path, out_path, _path(dropped_path), decide, counted[0], progress
    )
    return Summary("dedupe", in_path, read, kept, out_path, dropped, seconds, dedupe.stats())


def _counting(items: Iterator[str], counter: list[int]) -> Iterator[str]:
    n = 0
    for item in items:
        n += 1
        yield item
    counter.append(n)


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None


def leakage_jsonl(
    in_path: str | Path,
    out_path: str | Path,
    *,
    tests: list[str | Path],
    dropped_path: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> Summary:
    """Drop every record that overlaps one of the `tests` files; `options` are LeakageConfig keys."""
    in_path, out_path = Path(in_path), Path(out_path)
    config = LeakageConfig(test=[str(t) for t in tests], **options)
    total = sum(1 for _ in _scan(in_path, config.fields))
    leakage = LeakageFilter(config)

    def decide(record: dict[str, Any]) -> dict[str, Any] | None:
        result = leakage(record)
        return None if result is True else {"filter": "leakage", "reason": result[1]}

    read, kept, dropped, seconds = _run(
        "leakage", in_path, out_path, _path(dropped_path), decide, total, progress
    )
    return Summary("leakage", in_path, read, kept, out_path, dropped, seconds, leakage.stats())


def _help(config: type, key: str) -> str:
    field = config.model_fields[key]
    return f"{field.description} (default: {field.default})"


def add_commands(subparsers: Any) -> None:
    """Register `dedupe` and `leakage` under an argparse subparsers object (`engine filter ...`)."""
    dd = subparsers.add_parser(
        "dedupe", help="drop ROUGE-L near-duplicates of earlier records (Self-Instruct rule)"
    )
    dd.add_argument("input", type=Path, help="JSONL file")
    dd.add_argument("-o", "--output", type=Path, required=True, help="kept records (JSONL)")
    dd.add_argument("--field", action="append", dest="fields", help=_help(RougeDedupeConfig, "fields"))
    dd.add_argument("--threshold", type=float, help=_help(RougeDedupeConfig, "threshold"))
    dd.add_argument("--seed", type=Path, help="JSONL seed pool that pre-populates the kept set")
    dd.add_argument(
        "--core", action="store_true", help="compare boilerplate-free cores (learnt from the input)"
    )
    dd.add_argument(
        "--dropped", type=Path, help="side file of dropped records (default: OUTPUT.dropped.jsonl)"
    )
    dd.set_defaults(func=_cli(_dedupe_args, dd))

    lk = subparsers.add_parser("leakage", help="drop records that overlap a test set")
    lk.add_argument("input", type=Path, help="JSONL file")
    lk.add_argument("-o", "--output", type=Path, required=True, help="kept records (JSONL)")
    lk.add_argument("--test", action="append", required=True, type=Path, help="test-set JSONL (repeatable)")
    lk.add_argument("--field", action="append", dest="fields", help=_help(LeakageConfig, "fields"))
    lk.add_argument("--test-field", action="append", dest="test_fields", help="fields of test records")
    lk.add_argument("--ngram", type=int, help=_help(LeakageConfig, "ngram"))
    lk.add_argument("--share", type=float, dest="ngram_share", help=_help(LeakageConfig, "ngram_share"))
    lk.add_argument("--no-core", action="store_false", dest="core", help="n-grams on whole texts")
    lk.add_argument(
        "--rouge", type=float, dest="rouge_threshold", help=_help(LeakageConfig, "rouge_threshold")
    )
    lk.add_argument(
        "--dropped", type=Path, help="side file of dropped records (default: OUTPUT.dropped.jsonl)"
    )
    lk.set_defaults(func=_cli(_leakage_args, lk))


def _dedupe_args(args: argparse.Namespace) -> Summary:
    return dedupe_jsonl(
        args.input, args.output, fields=args.fields, threshold=args.threshold,
        dropped_path=args.dropped, seed=args.seed, core=args.core,
    )  # fmt: skip


def _leakage_args(args: argparse.Namespace) -> Summary:
    keys = ("fields", "test_fields", "ngram", "ngram_share", "rouge_threshold")
    options = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    return leakage_jsonl(
        args.input, args.output, tests=args.test, dropped_path=args.dropped, core=args.core, **options
    )


def _cli(
    run: Callable[[argparse.Namespace], Summary], parser: argparse.ArgumentParser
) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        try:
            summary = run(args)
        except ValidationError as exc:
            print(f"error: {flag_errors(parser).from_validation(exc)}", file=sys.stderr)
            return 2
        except (SpecError, ValueError) as exc:
            print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        print(summary.line())
        return 0

    return command


def main(argv: list[str] | None = None, prog: str = "python -m engine filter") -> int:
    """`dedupe ...` or `leakage ...` (what follows `engine filter`); returns the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
