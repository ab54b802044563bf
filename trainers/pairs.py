"""DPO preference pairs in TRL's conversational form: {"id", "prompt": [system, user],
"chosen": [assistant], "rejected": [assistant]}.

Three ways in: `build_pairs` joins teacher and student answer records by id (chosen = teacher,
rejected = student, agreeing pairs dropped); `pair_from_record` converts a preference_pairs stage record
(`chosen` / `rejected` answer objects); a JSONL file already in the conversational form is used as is.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from engine.errors import SpecError
from engine.types import Record
from trainers.data import Formatter, read_sources
from trainers.spec import TrainSpec

Pair = dict[str, Any]


def normalise(text: Any) -> str:
    """NFKC (full-width -> half-width), lower case, all whitespace removed."""
    return "".join(unicodedata.normalize("NFKC", str(text)).lower().split())


def _labels(value: Any) -> frozenset[str]:
    items = value if isinstance(value, list) else [value]
    return frozenset(normalise(v) for v in items if str(v).strip())


def agree(teacher: Record, student: Record, formatter: Formatter, on: str = "label") -> bool:
    """Same label set (normalised, order-free) for `on="label"`; same rendered answer for `on="answer"`."""
    if on == "label":
        field = formatter.data.label_field
        return _labels(teacher.get(field, [])) == _labels(student.get(field, []))
    return formatter.answer(teacher, "joint") == formatter.answer(student, "joint")


def _message(formatter: Formatter, answer: Any) -> list[dict[str, str]]:
    if isinstance(answer, list):  # already [assistant message]
        return answer
    return [{"role": "assistant", "content": formatter.answer(answer, "joint")}]


def build_pairs(
    teacher_records: list[Record],
    student_records: list[Record],
    formatter: Formatter | None = None,
    *,
    agree_on: str = "label",
) -> list[Pair]:
    """Pairs for every id both sides answered and disagree on; the prompt is built from the teacher record."""
    formatter = formatter or Formatter.default()
    id_field = formatter.data.id_field
    students = {r[id_field]: r for r in student_records if id_field in r}
    pairs = []
    for teacher in teacher_records:
        student = students.get(teacher.get(id_field))
        if student is None or agree(teacher, student, formatter, agree_on):
            continue
        for side, record in (("teacher", teacher), ("student", student)):
            missing = [f for f in formatter.answer_fields("joint") if f not in record]
            if missing:
                raise SpecError(f"{side} record {teacher[id_field]}: missing field {missing[0]!r}")
        pairs.append(
            {
                "id": teacher[id_field],
                "prompt": formatter.prompt(teacher, "joint"),
                "chosen": _message(formatter, teacher),
                "rejected": _message(formatter, student),
            }
        )
    return pairs


def pair_from_record(record: Record, formatter: Formatter) -> Pair:
    """A conversational pair, or a stage record with `chosen`/`rejected` answer objects, as a pair."""
    for key in ("chosen", "rejected"):
        if key not in record:
            rid = record.get(formatter.data.id_field, "?")
            raise SpecError(f"pair record {rid}: missing {key!r}; expected prompt/chosen/rejected")
    prompt = record.get("prompt")
    if not isinstance(prompt, list):
        prompt = formatter.prompt(record, "joint")
    return {
        "id": record.get(formatter.data.id_field),
        "prompt": prompt,
        "chosen": _message(formatter, record["chosen"]),
        "rejected": _message(formatter, record["rejected"]),
    }


def read_pairs(spec: TrainSpec, formatter: Formatter) -> tuple[list[Pair], list[Record]]:
    """(pairs, the records whose input the test-set check must see) from the spec's DPO data."""
    data = spec.data
    if data.pairs:
        records = read_sources(spec, data.pairs, "data.pairs")
        return [pair_from_record(r, formatter) for r in records], records
    if not (data.teacher and data.student):
        raise spec.fail("data", "DPO needs data.pairs, or both data.teacher and data.student")
    teacher = read_sources(spec, data.teacher, "data.teacher")
    student = read_sources(spec, data.student, "data.student")
    pairs = build_pairs(teacher, student, formatter, agree_on=data.pairs_agree_on)
    if not pairs:
        raise spec.fail("data.student", f"no disagreeing pair among {len(teacher)} teacher records")
    return pairs, teacher
