"""The task's data shapes in one place: record field names, the answer's JSON schemas and how a stage
asks a provider for JSON (OpenAI `response_format`, vLLM `guided_json`, or nothing)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

INPUT = "feature_content"  # the patient record, one `name: value` line per field
DISEASES = "diseases"  # list of disease names
REASON = "reason"  # list of evidence points (诊断依据), without numbering

# The lines of a competition record, in the order the official files write them.
RECORD_FIELDS = (
    "性别", "年龄", "主诉", "现病史", "既往史", "个人史",
    "过敏史", "婚育史", "流行病史", "体格检查", "辅助检查",
)  # fmt: skip
REQUIRED_RECORD_FIELDS = ("性别", "年龄", "主诉", "现病史")

JsonMode = Literal["json_schema", "json_object", "guided_json", "off"]


def answer_fields(*, diseases: bool, reason: bool, reason_first: bool = True) -> list[str]:
    """The answer keys a prompt asks for, in the order the model should write them."""
    fields = [f for f, wanted in ((REASON, reason), (DISEASES, diseases)) if wanted]
    return fields if reason_first else fields[::-1]


def _string_list(max_items: int | None, max_chars: int | None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "string", "minLength": 1}
    if max_chars:
        item["maxLength"] = max_chars
    schema: dict[str, Any] = {"type": "array", "items": item, "minItems": 1}
    if max_items:
        schema["maxItems"] = max_items
    return schema


def answer_schema(
    fields: Iterable[str],
    *,
    max_items: int | None = None,
    max_chars: int | None = None,
) -> dict[str, Any]:
    """A JSON schema for an answer object holding `fields` (each a non-empty list of strings), in order.

    Constrained decoders (xgrammar, vLLM) write properties in schema order, so the order is the answer's.
    The limits keep a small model from writing one endless item until max_tokens cuts the JSON off.
    """
    fields = list(fields)
    return {
        "type": "object",
        "properties": {f: _string_list(max_items, max_chars) for f in fields},
        "required": fields,
        "additionalProperties": False,
    }


def record_schema(
    fields: Iterable[str], required: Iterable[str], max_chars: int | None = None
) -> dict[str, Any]:
    """A JSON schema for a generated patient record: one string per record line, keys in line order."""
    fields, required = list(fields), set(required)
    props: dict[str, Any] = {}
    for name in fields:
        prop: dict[str, Any] = {"type": "string"}
        if name in required:
            prop["minLength"] = 1
        if max_chars:
            prop["maxLength"] = max_chars
        props[name] = prop
    return {"type": "object", "properties": props, "required": fields, "additionalProperties": False}


def json_request(mode: JsonMode, schema: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, extra_body) that ask a provider for JSON matching `schema`.

    json_schema: OpenAI structured output (the local provider compiles it with xgrammar);
    json_object: any JSON object (DeepSeek, DashScope: the prompt must say "JSON" and show the shape);
    guided_json: vLLM's extra_body key; off: no constraint, the parser copes with free text.
    """
    if mode == "json_schema":
        fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
        return {"response_format": fmt}, {}
    if mode == "json_object":
        return {"response_format": {"type": "json_object"}}, {}
    if mode == "guided_json":
        return {}, {"guided_json": schema}
    return {}, {}


def render_record(values: dict[str, str], fields: Iterable[str] = RECORD_FIELDS) -> str:
    """`{"性别": "男", ...}` -> the competition's `性别: 男\\n年龄: ...` text; absent fields stay empty."""
    return "\n".join(f"{name}: {values.get(name, '')}" for name in fields)


def answer_json(record: dict[str, Any], fields: Iterable[str]) -> str:
    """A labelled record's answer as the JSON text a demo shows (and the model should write)."""
    return json.dumps({f: record[f] for f in fields}, ensure_ascii=False)


def format_example(fields: Iterable[str]) -> str:
    """The answer's shape as a prompt shows it: `{"reason": ["依据1", "依据2"], "diseases": ["疾病1"]}`."""
    shapes = {REASON: ["依据1", "依据2"], DISEASES: ["疾病1"]}
    return json.dumps({f: shapes.get(f, "……") for f in fields}, ensure_ascii=False)


# The English keys of structured case sources (e.g. CMB-Clin/MedQA conversions) -> record line names.
ENGLISH_KEYS = {
    "gender": "性别",
    "age": "年龄",
    "chiefComplaint": "主诉",
    "historyOfPresentIllness": "现病史",
    "pastHistory": "既往史",
    "personalHistory": "个人史",
    "allergicHistory": "过敏史",
    "reproductiveHistory": "婚育史",
    "pregnancyAndDelivery": "婚育史",
    "maritalHistory": "婚育史",
    "epidemicHistory": "流行病史",
    "physicalExamination": "体格检查",
    "auxiliaryExamination": "辅助检查",
}
