"""`engine demos FROM --k K -o demos.jsonl`: a few-shot demo pool from the user's own labelled records.

FROM is a JSONL file or `spec.toml:STAGE` (that stage's kept records). A record is usable when it has
`feature_content`, `diseases` and `reason` (lists, or the official strings, which are split); others, and
repeats of an input already taken (the same text after normalisation), are skipped. Of the usable records
`--pick` chooses K, the same on every run:

  first   the first K in file order (the first user took the first 246 of their labelled records)
  spread  each next demo is the earliest record that names the most diseases not shown yet, so the pool
          covers as many diseases as it can (ties: file order)
  random  K drawn with random.Random(--seed), kept in file order

The pool is written atomically as {id, feature_content, diseases, reason} lines. A stage or train spec
then shows `k` demos per prompt from it (`demos = "demos.jsonl"`, `k = 6`, `demo_choice`).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.errors import SpecError
from engine.types import Record
from evals.normalize import canonical, normalize_disease
from generators.medical.prompts import labelled
from generators.medical.schema import DISEASES, INPUT, REASON

PICKS = ("first", "spread", "random")


def add_demos_command(sub: Any) -> None:
    cmd = sub.add_parser(
        "demos",
        help="build a few-shot demo pool from labelled records",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("source", metavar="FROM", help="labelled records: a JSONL file or spec.toml:STAGE")
    cmd.add_argument("--k", type=int, required=True, help="demos in the pool, e.g. 246")
    cmd.add_argument("--pick", choices=PICKS, default="first", help="how the K are chosen (default: first)")
    cmd.add_argument("--seed", type=int, default=0, help="with --pick random")
    cmd.add_argument("-o", "--output", type=Path, required=True, help="the pool to write (JSONL)")
    cmd.set_defaults(func=cmd_demos)


def usable(records: Iterator[tuple[str, Record]]) -> tuple[list[Record], dict[str, int]]:
    """The labelled records with new inputs, as demo records; and how many were skipped, by reason."""
    kept, seen, skipped = [], set(), {"unlabelled": 0, "repeated input": 0}
    for where, record in records:
        try:
            demo = labelled(record, where)
        except SpecError:
            skipped["unlabelled"] += 1
            continue
        key = canonical(str(demo[INPUT]))
        if key in seen:
            skipped["repeated input"] += 1
            continue
        seen.add(key)
        rid = record.get("id", where)
        kept.append({"id": rid, INPUT: demo[INPUT], DISEASES: demo[DISEASES], REASON: demo[REASON]})
    return kept, skipped


def pick(records: list[Record], k: int, how: str, seed: int = 0) -> list[Record]:
    """K of `records` (see the module docstring), in file order for `first` and `random`."""
    if how == "first" or k >= len(records):
        return records[:k]
    if how == "random":
        chosen = set(random.Random(seed).sample(range(len(records)), k))
        return [r for i, r in enumerate(records) if i in chosen]
    names = [{normalize_disease(d) for d in r[DISEASES]} for r in records]
    shown: set[str] = set()
    left = list(range(len(records)))
    out = []
    for _ in range(k):
        best = max(left, key=lambda i: (len(names[i] - shown), -i))
        left.remove(best)
        shown |= names[best]
        out.append(records[best])
    return out


def _read(source: str) -> Iterator[tuple[str, Record]]:
    from engine.jsonl import numbered_jsonl
    from engine.stage_ref import resolve_stage

    stage = resolve_stage(source)
    if stage is not None:
        for n, record in enumerate(stage.records(), 1):
            yield f"{stage.folder}/kept #{n}", record
        return
    for line, record in numbered_jsonl(source):
        yield f"{source}:{line}", record


def cmd_demos(args: argparse.Namespace) -> int:
    from engine.atomic import atomic_output
    from engine.jsonl import write_jsonl

    if args.k < 1:
        raise SpecError(f"--k {args.k}: give the number of demos the pool should hold (at least 1)")
    if args.output.is_dir():
        raise SpecError(f"-o {args.output}: is a folder; give a file name")
    records, skipped = usable(_read(args.source))
    if not records:
        raise SpecError(f"{args.source}: no labelled record (feature_content, diseases and reason)")
    demos = pick(records, args.k, args.pick, args.seed)
    with atomic_output(args.output) as out:
        write_jsonl(demos, out)
    skips = ", ".join(f"{n} {why}" for why, n in skipped.items() if n) or "none skipped"
    diseases = {normalize_disease(d) for demo in demos for d in demo[DISEASES]}
    per_demo = {f: sum(len(d[f]) for d in demos) / len(demos) for f in (DISEASES, REASON)}
    print(
        f"wrote {len(demos)} demos to {args.output} (--pick {args.pick}; {len(records)} usable records, "
        f"{skips}); {len(diseases)} distinct diseases, {per_demo[DISEASES]:.1f} diseases and "
        f"{per_demo[REASON]:.1f} reasons per demo",
        file=sys.stderr,
    )
    if len(demos) < args.k:
        print(f"warning: only {len(demos)} usable records, fewer than --k {args.k}", file=sys.stderr)
    return 0
