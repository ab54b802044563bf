"""Answer files: read engine records or the official submission format into answers, and write the
official submission format byte-compatible with the competition's example (20250214171329_提交示例.jsonl).

The official line is compact JSON with keys `id, reason, diseases, feature_content`, non-ASCII kept
as is, `/` escaped as `\\/`; `reason` is `1. …；\\n2. …。` (points joined by the two characters
backslash + n, each ending with `；`, the last with `。`); `diseases` is one name, or `1. A；2. B`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.atomic import atomic_output
from engine.errors import SpecError
from engine.jsonl import numbered_jsonl
from engine.spec_errors import SpecErrors
from evals.normalize import LITERAL_NEWLINE, as_items, split_diseases, split_reason

SUBMISSION_KEYS = ("id", "reason", "diseases", "feature_content")
_REASON_SEPARATORS = {"literal": LITERAL_NEWLINE, "newline": "\n", "none": ""}


@dataclass
class Answer:
    """One record's answer as lists: disease names and reason points, without numbering."""

    id: Any
    diseases: list[str]
    reasons: list[str]
    feature_content: str | None = None

    @property
    def key(self) -> str:
        """The join key: `3104` and `"3104"` are the same record."""
        return str(self.id)


class SubmissionFormat(BaseModel):
    """How `write_submission` renders lists; the defaults reproduce the official example."""

    model_config = ConfigDict(extra="forbid")

    reason_separator: Literal["literal", "newline", "none"] = Field(
        "literal", description="between reason points: literal backslash-n (official), a newline, or nothing"
    )
    point_end: str = Field("；", description="ends every reason point but the last")
    last_point_end: str = Field("。", description="ends the last reason point")
    disease_numbering: bool = Field(True, description="number diseases (`1. A；2. B`) when there are several")
    disease_separator: str = Field("；", description="between diseases")
    escape_slash: bool = Field(True, description="write `/` as `\\/`, as the official example does")


def _records(source: str | Path | Iterable[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) pairs; `where` is `file:line` or `records[i]` for error messages."""
    if isinstance(source, (str, Path)):
        for number, record in numbered_jsonl(source):
            yield f"{source}:{number}", record
    else:
        for index, record in enumerate(source):
            if not isinstance(record, dict):
                raise SpecError(f"records[{index}]: expected a dict, got {type(record).__name__}")
            yield f"records[{index}]", record


def _to_answer(where: str, record: dict[str, Any]) -> Answer:
    if record.get("id") is None:
        raise SpecError(f"{where}: record has no 'id'; answers are joined by id")
    if "diseases" not in record and "reason" not in record:
        raise SpecError(
            f"{where}: record {record['id']!r} has neither 'diseases' nor 'reason'; is this an answer file?"
        )
    try:
        diseases = as_items(record.get("diseases"), split_diseases, field="diseases")
        reasons = as_items(record.get("reason"), split_reason, field="reason")
    except ValueError as err:
        raise SpecError(f"{where}: record {record['id']!r}: {err}") from err
    feature_content = record.get("feature_content")
    return Answer(
        record["id"], diseases, reasons, feature_content if isinstance(feature_content, str) else None
    )


def load_answers(source: str | Path | Iterable[dict[str, Any]]) -> list[Answer]:
    """Answers from a JSONL file (engine records or the official format) or from dicts.

    `diseases` and `reason` may be strings (split with the normalisation rules) or lists. A null or
    absent field is an empty answer; a record with neither field is an error (probably an input file).
    """
    return [_to_answer(where, record) for where, record in _records(source)]


def read_submission(path: str | Path) -> list[dict[str, Any]]:
    """The official format parsed into records with list fields:
    `{"id", "reason": [points], "diseases": [names], "feature_content"}`."""
    return [
        {"id": a.id, "reason": a.reasons, "diseases": a.diseases, "feature_content": a.feature_content}
        for a in load_answers(path)
    ]


def format_reason(points: list[str], fmt: SubmissionFormat | None = None) -> str:
    """`["A", "B"]` -> `1. A；\\n2. B。` (with the default format)."""
    fmt = fmt or SubmissionFormat()
    last = len(points)
    rendered = [
        f"{n}. {p}{fmt.last_point_end if n == last else fmt.point_end}" for n, p in enumerate(points, 1)
    ]
    return _REASON_SEPARATORS[fmt.reason_separator].join(rendered)


def format_diseases(names: list[str], fmt: SubmissionFormat | None = None) -> str:
    """`["A"]` -> `A`; `["A", "B"]` -> `1. A；2. B` (with the default format)."""
    fmt = fmt or SubmissionFormat()
    if len(names) > 1 and fmt.disease_numbering:
        names = [f"{n}. {name}" for n, name in enumerate(names, 1)]
    return fmt.disease_separator.join(names)


def _submission_line(where: str, answer: Answer, fmt: SubmissionFormat) -> str:
    if answer.feature_content is None:
        raise SpecError(
            f"{where}: record {answer.id!r} has no 'feature_content'; the submission format requires it"
        )
    line = {
        "id": answer.id,
        "reason": format_reason(answer.reasons, fmt),
        "diseases": format_diseases(answer.diseases, fmt),
        "feature_content": answer.feature_content,
    }
    text = json.dumps(line, ensure_ascii=False, separators=(",", ":"))
    # `/` only occurs inside JSON strings, so escaping it everywhere is safe.
    return text.replace("/", "\\/") if fmt.escape_slash else text


def dumps_submission_line(record: dict[str, Any], fmt: SubmissionFormat | None = None) -> str:
    """One official line (without the newline). List fields are rendered with `fmt`; string fields
    are parsed first, so every line comes out in the one configured format."""
    return _submission_line("record", _to_answer("record", record), fmt or SubmissionFormat())


def export_submission(
    records: Iterable[dict[str, Any]], out: BinaryIO, fmt: SubmissionFormat | None = None, **options: Any
) -> int:
    """Write records as official submission lines to a binary file; returns the number of lines.
    This is `python -m engine export --format submission [--set reason_separator=newline ...]`:
    `options` are SubmissionFormat fields."""
    if fmt is None:
        try:
            fmt = SubmissionFormat(**options)
        except ValidationError as exc:
            given = {(key,): f"--set {key}" for key in options}
            raise SpecErrors(model=SubmissionFormat, given=given).from_validation(exc) from None
    count = 0
    for where, record in _records(records):
        out.write((_submission_line(where, _to_answer(where, record), fmt) + "\n").encode("utf-8"))
        count += 1
    return count


def write_submission(
    records: Iterable[dict[str, Any]], path: str | Path, fmt: SubmissionFormat | None = None
) -> int:
    """Write records (dicts with list or string fields) as an official submission file; returns the
    number of lines. Written to a temporary file first, so a bad record leaves an existing file as it was."""
    with atomic_output(path) as handle:
        return export_submission(records, handle, fmt)
