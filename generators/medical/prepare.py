"""Derive the medical specs' input files from the shared data (never committed: the folder written here
ignores itself in git). One command, from the repository root:

    python -m generators.medical.prepare            # reads ../shared/data, writes runs/data/

Writes (ids as in the sources; zmdo cases get `zmdo-NNNN`):
  test_inputs.jsonl   the 8000 HealthAI 2025 test records (id, feature_content)
  labelled.jsonl      the 1037 CMB-Clin/MedQA cases as labelled records (feature_content, diseases, reason)
  demos.jsonl         the first 246 labelled records: the few-shot demo pool
  pool_test200.jsonl  200 test records drawn with a fixed seed: seed pool, and what training must exclude
  self_instruct_pool.jsonl  those 200 + 50 more labelled records (after the demos): the self-instruct seeds
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from engine.atomic import atomic_output
from engine.errors import SpecError
from engine.jsonl import numbered_jsonl, write_jsonl
from generators.medical.schema import DISEASES, ENGLISH_KEYS, INPUT, REASON, RECORD_FIELDS, render_record

ROOT = Path(__file__).resolve().parents[2]
TEST_FILES = (
    "healthai2025/20250208181531_camp_data_step_1_without_answer.jsonl",
    "healthai2025/20250312115015_camp_data_step_2_without_answer.jsonl",
)
CASES_FILE = "zmdo-medical-data-cleaning/cases.json"
DEMOS, EXTRA, TEST_SEEDS = 246, 50, 200  # the first user's recipe: 6 demos from 246 cases; 200 + 50 seeds
SEED = 2025


def case_record(index: int, case: dict[str, Any]) -> dict[str, Any]:
    """A zmdo case (English `condition` keys) as a labelled record; `analyses` are the evidence points."""
    values: dict[str, list[str]] = {}
    for key, value in (case.get("condition") or {}).items():
        name = ENGLISH_KEYS.get(key)
        if name and value not in (None, ""):
            values.setdefault(name, []).append(str(value).strip())
    reason = [a["description"].strip() for a in case.get("analyses") or [] if a.get("description")]
    if not reason:  # fall back on the per-diagnosis reasons
        reason = [d["reason"].strip() for d in case.get("diagnoses") or [] if d.get("reason")]
    return {
        "id": f"zmdo-{index:04d}",
        INPUT: render_record({k: "；".join(v) for k, v in values.items()}, RECORD_FIELDS),
        DISEASES: [str(d).strip() for d in case.get("diseases") or [] if str(d).strip()],
        REASON: reason,
    }


def read_test_inputs(data: Path) -> list[dict[str, Any]]:
    records = []
    for name in TEST_FILES:
        path = data / name
        if not path.is_file():
            raise SpecError(f"{path}: cannot read (no such file); pass --data <shared data folder>")
        for number, record in numbered_jsonl(path):
            if "id" not in record or INPUT not in record:
                raise SpecError(f"{path}:{number}: not a test record (needs id and {INPUT})")
            records.append({"id": record["id"], INPUT: record[INPUT]})
    return records


def read_cases(data: Path) -> list[dict[str, Any]]:
    path = data / CASES_FILE
    try:
        cases = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror}); pass --data <shared data folder>") from None
    labelled = [case_record(i, case) for i, case in enumerate(cases)]
    return [r for r in labelled if r[DISEASES] and r[REASON]]


def _write(path: Path, records: Iterable[dict[str, Any]]) -> int:
    with atomic_output(path) as out:
        return write_jsonl(records, out)


def prepare(data: Path, out: Path) -> dict[str, int]:
    tests, labelled = read_test_inputs(data), read_cases(data)
    if len(labelled) < DEMOS + EXTRA:
        raise SpecError(f"{data / CASES_FILE}: {len(labelled)} labelled cases, need at least {DEMOS + EXTRA}")
    seeds = random.Random(SEED).sample(tests, TEST_SEEDS)
    extra = labelled[DEMOS : DEMOS + EXTRA]
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("# derived from ../shared/data: never commit\n*\n")
    return {
        "test_inputs.jsonl": _write(out / "test_inputs.jsonl", tests),
        "labelled.jsonl": _write(out / "labelled.jsonl", labelled),
        "demos.jsonl": _write(out / "demos.jsonl", labelled[:DEMOS]),
        "pool_test200.jsonl": _write(out / "pool_test200.jsonl", seeds),
        "self_instruct_pool.jsonl": _write(
            out / "self_instruct_pool.jsonl", [*seeds, *({"id": r["id"], INPUT: r[INPUT]} for r in extra)]
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m generators.medical.prepare", description=__doc__)
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data", help="shared data folder"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "data", help="output folder")
    args = parser.parse_args(argv)
    try:
        counts = prepare(args.data, args.out)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, count in counts.items():
        print(f"{args.out / name}: {count} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
