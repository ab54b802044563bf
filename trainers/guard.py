"""Refuse to train on records that overlap the declared test set, unless the spec says `force = true`.

The check is the engine's own `leakage` filter (filters/leakage.py): an exact copy after normalisation, or
a large share of shared character n-grams, so a lightly edited test record counts as a copy too.
"""

from __future__ import annotations

import logging

from engine.types import Record
from filters.base import build_filter
from trainers.data import source_files
from trainers.spec import TrainSpec

log = logging.getLogger(__name__)


def check_test_overlap(spec: TrainSpec, records: list[Record], field: str | None = None) -> list[Record]:
    """Raise (or, forced, warn) when training records overlap the test set; returns the overlapping ones."""
    if not spec.test_set.files:
        return []
    field = field or spec.data.input_field
    tests = [str(f) for s in spec.test_set.files for f in source_files(spec, s, "test_set.files")]
    options = {"test": tests, "fields": [field], "test_fields": [spec.test_set.field]}
    leakage = build_filter("leakage", options, base_dir=spec.path.parent)
    hits: list[tuple[Record, str]] = []
    for record in records:
        if field in record and (verdict := leakage(record)) is not True:
            hits.append((record, verdict[1]))
    if not hits:
        return []
    first, reason = hits[0]
    message = (
        f"{len(hits)} training record(s) overlap the test set on {field!r} "
        f"(first: id {first.get(spec.data.id_field, '?')}: {reason})"
    )
    if not spec.force:
        raise spec.fail("test_set", f"{message}; remove them, or set force = true to train anyway")
    log.warning("%s: training anyway (force = true)", message)
    return [record for record, _ in hits]
