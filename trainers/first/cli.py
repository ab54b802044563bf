"""argparse wiring for FIRST, for the engine CLI to mount: `distill calibrate STORE_DIR`. Also runnable
alone: `python -m trainers.first.cli distill calibrate STORE_DIR [--val-fraction 0.1]`."""

from __future__ import annotations

import argparse
import sys

from engine.errors import EngineError


def add_distill_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `distill` (with `calibrate`) to an argparse subparsers object; each leaf sets `func(args)`."""
    distill = subparsers.add_parser("distill", help="top-k (FIRST) distillation targets")
    commands = distill.add_subparsers(dest="distill_command", required=True)
    calibrate = commands.add_parser(
        "calibrate",
        help="choose FIRST's c (or no transform) on a validation split of a top-k store and record it in "
        "its manifest",
    )
    calibrate.add_argument("store_dir", metavar="STORE_DIR")
    calibrate.add_argument("--val-fraction", type=float, default=0.1, help="share of records (by key hash)")
    calibrate.add_argument(
        "--tail-bucket", action="store_true", help="calibrate with the (k+1)-th tail bucket, as training will"
    )
    calibrate.add_argument("--dry-run", action="store_true", help="print the ECE per c; leave the manifest")
    calibrate.set_defaults(func=run_calibrate)
    return distill


def run_calibrate(args: argparse.Namespace) -> int:
    from trainers.first.calibrate import calibrate_store

    result = calibrate_store(args.store_dir, args.val_fraction, args.tail_bucket, write=not args.dry_run)
    where = "not written (--dry-run)" if args.dry_run else f"written to {args.store_dir}/manifest.json"
    if result.c is None:
        print(f"chosen: no transform (ECE {result.ece:.4f}; no c did better); {where}")
    else:
        ece = f"ECE {result.ece:.4f}, untransformed {result.ece_identity:.4f}"
        print(f"chosen c={result.c:.2f} ({ece}); {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.first.cli")
    add_distill_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
