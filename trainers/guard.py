"""Refuse to train on records that overlap the declared test set, unless the spec says `force = true`.

The check is the engine's own `leakage` filter (filters/leakage.py): an exact copy after normalisation, a
large share of shared character n-grams, or a test record contained in the text, so a lightly edited test
record counts as a copy too. A record without the input field (a prompt/completion row, as FIRST and DPO
pairs take) is checked on its prompt: the last user message, or the plain prompt text.
"""

from __future__ import annotations

import logging
from typing import Any

from engine.types import Record
from filters.base import build_filter
from trainers.data import source_files
from trainers.spec import TrainSpec

log = logging.getLogger(__name__)


def prompt_text(prompt: Any) -> str | None:
    """The text of a TRL prompt a test input could hide in: its last user message, or the plain prompt."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    return None


def check_test_overlap(
    spec: TrainSpec, records: list[Record], field: str | None = None, id_field: str | None = None
) -> list[Record]:
    """Raise (or, forced, warn) when training records overlap the test set; returns the overlapping ones."""
    if not spec.test_set.files:
        return []
    field = field or spec.test_set.field  # training and test records name their input alike
    id_field = id_field or "id"
    tests = [str(f) for s in spec.test_set.files for f in source_files(spec, s, "test_set.files")]
    options = {"test": tests, "fields": ["text"], "test_fields": [spec.test_set.field]}
    leakage = build_filter("leakage", options, base_dir=spec.path.parent)
    hits: list[tuple[Record, str]] = []
    checked_on = set()
    for record in records:
        text, on = (
            (record[field], field) if field in record else (prompt_text(record.get("prompt")), "prompt")
        )
        if text is None:
            continue
        checked_on.add(on)
        if (verdict := leakage({"id": record.get(id_field), "text": text})) is not True:
            hits.append((record, verdict[1]))
    if not hits:
        return []
    first, reason = hits[0]
    message = (
        f"{len(hits)} training record(s) overlap the test set on {' / '.join(sorted(checked_on))!r} "
        f"(first: id {first.get(id_field, '?')}: {reason})"
    )
    if not spec.force:
        raise spec.fail("test_set", f"{message}; remove them, or set force = true to train anyway")
    log.warning("%s: training anyway (force = true)", message)
    return [record for record, _ in hits]
