"""DPO preference pairs in TRL's conversational form: {"id", "prompt": [system, user],
"chosen": [assistant], "rejected": [assistant]}.

Three ways in: `build_pairs` joins teacher and student answer records by id (chosen = teacher,
rejected = student, agreeing pairs dropped); `pair_from_record` converts a preference_pairs stage record
(`chosen` / `rejected` answer objects); a JSONL file already in the conversational form is used as is.
"""

from __future__ import annotations

from typing import Any

from engine.errors import SpecError
from engine.types import Record
from evals.normalize import as_items, same_diseases, split_diseases
from generators.medical.format import PromptFormat
from generators.medical.schema import DISEASES
from trainers.data import default_format, read_sources, split_validation
from trainers.spec import TrainSpec

Pair = dict[str, Any]


def agree(teacher: Record, student: Record, fmt: PromptFormat, on: str = "label") -> bool:
    """The task's "same diagnosis" rule for `on="label"`; the same rendered answer for `on="answer"`."""
    if on == "label":
        return same_diseases(_labels(teacher), _labels(student))
    return fmt.answer(teacher, "joint") == fmt.answer(student, "joint")


def _labels(record: Record) -> list[str]:
    try:
        return as_items(record.get(DISEASES), split_diseases, field=DISEASES)
    except ValueError as exc:
        raise SpecError(f"record {record.get('id', '?')}: {exc}") from None


def _message(fmt: PromptFormat, answer: Any) -> list[dict[str, str]]:
    if isinstance(answer, list):  # already [assistant message]
        return answer
    return [{"role": "assistant", "content": fmt.answer(answer, "joint")}]


def build_pairs(
    teacher_records: list[Record],
    student_records: list[Record],
    fmt: PromptFormat | None = None,
    *,
    agree_on: str = "label",
) -> list[Pair]:
    """Pairs for every id both sides answered and disagree on; the prompt is built from the teacher record."""
    fmt = fmt or default_format()
    students = {r["id"]: r for r in student_records if "id" in r}
    pairs = []
    for teacher in teacher_records:
        student = students.get(teacher.get("id"))
        if student is None:
            continue
        for side, record in (("teacher", teacher), ("student", student)):
            missing = [f for f in fmt.fields("joint") if f not in record]
            if missing:
                raise SpecError(f"{side} record {teacher['id']}: missing field {missing[0]!r}")
        if agree(teacher, student, fmt, agree_on):
            continue
        pairs.append(
            {
                "id": teacher["id"],
                "prompt": fmt.messages(teacher, "joint"),
                "chosen": _message(fmt, teacher),
                "rejected": _message(fmt, student),
            }
        )
    return pairs


def pair_from_record(record: Record, fmt: PromptFormat) -> Pair:
    """A conversational pair, or a stage record with `chosen`/`rejected` answer objects, as a pair."""
    for key in ("chosen", "rejected"):
        if key not in record:
            rid = record.get("id", "?")
            raise SpecError(f"pair record {rid}: missing {key!r}; expected prompt/chosen/rejected")
    prompt = record.get("prompt")
    if not isinstance(prompt, list):
        prompt = fmt.messages(record, "joint")
    return {
        "id": record.get("id"),
        "prompt": prompt,
        "chosen": _message(fmt, record["chosen"]),
        "rejected": _message(fmt, record["rejected"]),
    }


def read_pairs(spec: TrainSpec, fmt: PromptFormat) -> tuple[list[Pair], list[Record]]:
    """(pairs, the records whose input the test-set check must see) from the spec's DPO data."""
    data = spec.data
    if data.pairs:
        records = read_sources(spec, data.pairs, "data.pairs")
        return [pair_from_record(r, fmt) for r in records], records
    if not (data.teacher and data.student):
        raise spec.fail("data", "DPO needs data.pairs, or both data.teacher and data.student")
    teacher = read_sources(spec, data.teacher, "data.teacher")
    student = read_sources(spec, data.student, "data.student")
    pairs = build_pairs(teacher, student, fmt, agree_on=data.pairs_agree_on)
    if not pairs:
        raise spec.fail("data.student", f"no disagreeing pair among {len(teacher)} teacher records")
    return pairs, teacher


def split_pairs(spec: TrainSpec, pairs: list[Pair], fmt: PromptFormat) -> tuple[list[Pair], list[Pair]]:
    """(train, validation): data.validation files hold pairs too; without them a share is held out."""
    if spec.data.validation:
        held = read_sources(spec, spec.data.validation, "data.validation")
        return pairs, [pair_from_record(r, fmt) for r in held]
    return split_validation(spec, pairs)
