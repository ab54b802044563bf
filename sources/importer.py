"""Read a local dataset (JSON, JSONL, CSV, Parquet, or a folder written by `save_to_disk`) with
`datasets`, never downloading, and map its rows into task records; rows that cannot be mapped go to a
side file `OUT.errors.jsonl` (row index + reason) and are counted in the summary, never dropped silently."""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.atomic import atomic_output
from engine.errors import SpecError
from sources.mapping import Mapping, MappingError, has_path, map_row

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
PROGRESS_EVERY = 10_000


def load_local(path: str | Path) -> Any:
    """A `datasets.Dataset` read from a local file or saved folder; SpecError naming the path otherwise."""
    # offline before `datasets` is imported: it reads these once, and a local read must never reach a hub
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets

    path = Path(path)
    if not path.exists():
        raise SpecError(f"import: {path}: no such file or folder")
    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                split = "train" if "train" in loaded else next(iter(loaded))
                loaded = loaded[split]
            return loaded
        builder = BUILDERS.get(path.suffix.lower())
        if builder is None:
            known = ", ".join(sorted(BUILDERS))
            raise SpecError(
                f"import: {path}: unknown file type {path.suffix!r} (known: {known}, or a folder)"
            )
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except SpecError:
        raise
    except Exception as exc:  # datasets raises many kinds (ArrowInvalid, DatasetGenerationError, ...)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"import: {path}: cannot read ({type(exc).__name__}: {message})") from None


@dataclass
class ImportReport:
    rows: int = 0
    written: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def summary(self, out: Path, errors_path: Path) -> str:
        text = f"imported {self.written} of {self.rows} rows into {out}"
        failed = sum(self.errors.values())
        if failed:
            top = "; ".join(f"{reason} ({n})" for reason, n in self.errors.most_common(3))
            text += f"; {failed} could not be mapped, listed in {errors_path}: {top}"
        return text


def errors_path(out: Path) -> Path:
    """`records.jsonl` -> `records.errors.jsonl` (other names get `.errors.jsonl` appended)."""
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".errors.jsonl")


def import_dataset(
    source: str | Path, out: str | Path, mapping: Mapping, *, quiet: bool = False
) -> ImportReport:
    """Map every row of `source` into `out` (JSONL, atomic); rows that cannot be mapped into the side file."""
    out = Path(out)
    data = load_local(source)
    first = data[0] if len(data) else {}
    absent = [p for p in mapping.paths() if first and not has_path(first, p)]
    if absent:
        raise SpecError(
            f"import: {source}: field {absent[0]!r} of the mapping is not in the dataset "
            f"(columns: {', '.join(data.column_names)})"
        )
    report, seen = ImportReport(), set()
    bad_path = errors_path(out)
    with atomic_output(out) as good, atomic_output(bad_path) as bad:
        for index, row in enumerate(data):
            report.rows += 1
            try:
                record = map_row(mapping, row, index)
                if record["id"] in seen:
                    raise MappingError(f"duplicate id {record['id']!r}")
            except MappingError as exc:
                report.errors[_kind(str(exc))] += 1
                bad.write(orjson.dumps({"index": index, "reason": str(exc)}) + b"\n")
            except (KeyError, IndexError, ValueError) as exc:  # a bad id_template
                raise SpecError(f"import: id_template {mapping.id_template!r}: {exc}") from None
            else:
                seen.add(record["id"])
                good.write(orjson.dumps(record) + b"\n")
                report.written += 1
            if not quiet and report.rows % PROGRESS_EVERY == 0:
                print(f"  {report.rows}/{len(data)} rows", file=sys.stderr)
    if not report.errors:
        bad_path.unlink(missing_ok=True)  # no side file when every row was mapped
    return report


def _kind(message: str) -> str:
    """The reason without its per-row values, for counting (`duplicate id 'x'` -> `duplicate id`)."""
    return re.sub(r" '[^']*'", "", message).split(":")[0]
