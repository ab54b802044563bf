"""`python -m engine import SOURCE -o OUT --map MAPPING` and `python -m engine select CANDIDATES --like TEST
--top N -o OUT`: the sub-commands of the `sources` package (wired in through engine/cli.py's PLUGINS)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.atomic import atomic_output
from engine.errors import SpecError
from engine.jsonl import read_jsonl, write_jsonl

PROGRESS_EVERY_CHUNKS = 10  # a progress line per 10 chunks of candidates (about 20k)


def add_commands(sub: Any) -> None:
    imp = sub.add_parser(
        "import", help="map a local dataset (JSON/JSONL/CSV/Parquet/saved folder) to records"
    )
    imp.add_argument("source", type=Path, help="a data file, or a folder written by datasets' save_to_disk")
    imp.add_argument("-o", "--output", type=Path, required=True, help="records JSONL to write")
    imp.add_argument("--map", type=Path, required=True, help="field mapping TOML (see sources/mappings/)")
    imp.add_argument("--quiet", action="store_true", help="no progress lines")
    imp.set_defaults(func=cmd_import)

    sel = sub.add_parser("select", help="keep the records most like the test inputs (char n-gram TF-IDF)")
    sel.add_argument("candidates", type=Path, help="records JSONL to choose from")
    sel.add_argument(
        "--like", type=Path, action="append", required=True, help="test inputs JSONL (repeatable)"
    )
    sel.add_argument("-o", "--output", type=Path, required=True)
    sel.add_argument("--top", type=int, help="keep the N most similar")
    sel.add_argument("--threshold", type=float, help="keep those with similarity >= T")
    sel.add_argument(
        "--field", default="feature_content", help="the text compared (default: feature_content)"
    )
    sel.add_argument("--analyzer", default="char_wb", choices=["char_wb", "char"])
    sel.add_argument("--no-leakage", action="store_true", help="skip the leakage filter after selection")
    sel.set_defaults(func=cmd_select)


def cmd_import(args: argparse.Namespace) -> int:
    from sources.importer import errors_path, import_dataset
    from sources.mapping import load_mapping

    mapping = load_mapping(args.map)
    report = import_dataset(args.source, args.output, mapping, quiet=args.quiet)
    print(report.summary(args.output, errors_path(args.output)), file=sys.stderr)
    return 0


def _texts(path: Path, field: str) -> tuple[list[dict[str, Any]], list[str]]:
    try:
        records = list(read_jsonl(path))
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror})") from None
    texts = []
    for number, record in enumerate(records, 1):
        value = record.get(field)
        if not isinstance(value, str):
            raise SpecError(f"{path}: record {number} (id {record.get('id')!r}) has no text field {field!r}")
        texts.append(value)
    return records, texts


def _progress(done: int, total: int) -> None:
    from sources.select import CHUNK  # here, not at the top: every engine command imports this module

    if done == total or done % (PROGRESS_EVERY_CHUNKS * CHUNK) == 0:
        print(f"  compared {done}/{total} candidates", file=sys.stderr)


def cmd_select(args: argparse.Namespace) -> int:
    from filters.base import build_filter
    from sources.select import distribution, format_distribution, rank

    if args.top is None and args.threshold is None:
        raise SpecError("select: give --top N and/or --threshold T")
    if args.top is not None and args.top < 1:
        raise SpecError("select: --top must be at least 1")
    records, texts = _texts(args.candidates, args.field)
    tests = [text for path in args.like for text in _texts(path, args.field)[1]]
    if not tests:
        raise SpecError(f"select: no test records in {', '.join(map(str, args.like))}")
    ranked = rank(
        texts, tests, top=args.top, threshold=args.threshold, analyzer=args.analyzer, progress=_progress
    )
    picked = [{**records[i], "similarity": round(score, 4)} for i, score in ranked]
    print(f"selected {len(picked)} of {len(records)} candidates", file=sys.stderr)
    if not args.no_leakage:
        leakage = build_filter("leakage", {"test": [str(p) for p in args.like], "fields": [args.field]})
        kept = [record for record in picked if leakage(record) is True]
        print(
            f"leakage filter removed {len(picked) - len(kept)}: {leakage.stats()['removed']}", file=sys.stderr
        )
        picked = kept
    with atomic_output(args.output) as out:
        write_jsonl(picked, out)
    print(format_distribution("test", distribution(tests)), file=sys.stderr)
    print(format_distribution("before", distribution(texts)), file=sys.stderr)
    print(format_distribution("after", distribution(r[args.field] for r in picked)), file=sys.stderr)
    print(f"wrote {len(picked)} records to {args.output}", file=sys.stderr)
    return 0
