"""Robust reading of model answers: a JSON object (bare, inside a ```json fence, or with text around it),
else numbered text under headings such as `诊断：` / `诊断依据：`. Anything unusable raises BadOutput with
the raw text, so the pipeline re-samples and finally records the answer as rejected."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from engine.errors import BadOutput
from evals.normalize import as_items, split_diseases, split_reason, strip_numbering
from generators.medical.schema import DISEASES, REASON

MAX_DISEASE_CHARS = 60  # a longer "name" is a sentence the parser mistook for a disease

# Keys a model may use instead of ours (Chinese, singular/plural); first match wins.
ALIASES = {
    REASON: ("reason", "reasons", "诊断依据", "依据", "理由", "evidence"),
    DISEASES: ("diseases", "disease", "诊断", "疾病", "诊断结果", "diagnosis", "diagnoses"),
}
SPLITTERS = {REASON: split_reason, DISEASES: split_diseases}
# Headings of free-text answers; `诊断依据` must be tried before `诊断`.
_HEADINGS = [
    (REASON, re.compile(r"^[#*\s]*(?:诊断依据|依据|理由|reasons?)[*\s]*(?:[:：][*\s]*(.*))?$", re.I)),
    (
        DISEASES,
        re.compile(r"^[#*\s]*(?:诊断结果|初步诊断|诊断|疾病|diseases?)[*\s]*(?:[:：][*\s]*(.*))?$", re.I),
    ),
]
_THINK = re.compile(r"<think>.*?</think>", re.S)
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_SENTENCE = re.compile(r"[，,。！？!?]")  # a bare answer with these is prose (a refusal), not a list


def clean(text: str) -> str:
    """The answer without a reasoning model's <think> block."""
    return _THINK.sub("", text).strip()


def _loads(candidate: str) -> Any:
    try:
        return json.loads(candidate)
    except ValueError:
        try:
            return json.loads(_TRAILING_COMMA.sub(r"\1", candidate))  # `[a, b,]`, a common slip
        except ValueError:
            return None


def find_json_object(text: str, keys: Iterable[str] = ()) -> dict[str, Any] | None:
    """The last JSON object in `text` holding one of `keys` (else the last object at all)."""
    text = clean(text)
    candidates: list[dict[str, Any]] = []
    whole = _loads(text)
    if isinstance(whole, dict):
        candidates.append(whole)
    for block in _FENCE.findall(text):
        value = _loads(block.strip())
        if isinstance(value, dict):
            candidates.append(value)
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            candidates.append(value)
    keys = set(keys)
    for value in reversed(candidates):  # the last one: a model that repeats the demos answers after them
        if keys & set(value):
            return value
    return candidates[-1] if candidates else None


def _lookup(obj: dict[str, Any], field: str) -> Any:
    for key in ALIASES.get(field, (field,)):
        if key in obj:
            return obj[key]
    return None


def _items(value: Any, field: str) -> list[str]:
    if isinstance(value, list):  # a list of strings, or of objects a model invented ({"依据": "..."})
        value = [v if isinstance(v, str) else _flatten(v) for v in value]
        items = as_items(value, SPLITTERS[field], field=field)
        return [item for part in items for item in (split_diseases(part) if field == DISEASES else [part])]
    if isinstance(value, str):
        return SPLITTERS[field](value)
    if value is None:
        return []
    return SPLITTERS[field](_flatten(value))


def _flatten(value: Any) -> str:
    if isinstance(value, dict):
        return "；".join(_flatten(v) for v in value.values())
    if isinstance(value, list):
        return "；".join(_flatten(v) for v in value)
    return "" if value is None else str(value)


def _sections(text: str, fields: list[str]) -> dict[str, list[str]]:
    """Free text split under headings; with no heading, a lone field takes a numbered list or one name."""
    found: dict[str, list[str]] = {}
    current = None
    for line in clean(text).splitlines():
        stripped = strip_numbering(line.strip()) if current is None else line.strip()
        for field, pattern in _HEADINGS:
            match = pattern.match(stripped)
            if match and field in fields:
                current = field
                found.setdefault(field, [])
                if (match.group(1) or "").strip():
                    found[field].append(match.group(1).strip())
                break
        else:
            if current is not None and line.strip():
                found[current].append(line.strip())
    if not found and len(fields) == 1:
        lines = [line.strip() for line in clean(text).splitlines() if line.strip()]
        numbered = any(strip_numbering(line) != line for line in lines)
        if numbered or (len(lines) == 1 and not _SENTENCE.search(lines[0])):  # a list, or one bare name
            found[fields[0]] = lines
    return found


def parse_answer(text: str, fields: Iterable[str]) -> dict[str, list[str]]:
    """`{"reason": [...], "diseases": [...]}` (the fields asked for) from a model's answer, or BadOutput."""
    fields = list(fields)
    obj = find_json_object(text, [alias for f in fields for alias in ALIASES[f]])
    if obj is not None:
        answer = {f: _items(_lookup(obj, f), f) for f in fields}
    else:
        sections = _sections(text, fields)
        answer = {f: SPLITTERS[f]("\n".join(sections.get(f, []))) for f in fields}
    for field in fields:
        if not answer[field]:
            how = "JSON object" if obj is not None else "text (no JSON object found)"
            raise BadOutput(f"answer has no {field!r} items ({how})", raw=text)
    for name in answer.get(DISEASES, []):
        if len(name) > MAX_DISEASE_CHARS:
            raise BadOutput(
                f"disease name longer than {MAX_DISEASE_CHARS} characters: {name[:30]!r}...", raw=text
            )
    if DISEASES in answer:
        answer[DISEASES] = list(dict.fromkeys(answer[DISEASES]))  # a model repeating itself
    return answer


def parse_record(
    text: str, fields: Iterable[str], required: Iterable[str], aliases: dict[str, str] | None = None
) -> dict[str, str]:
    """A generated patient record as {line name: value}: from a JSON object keyed by line names (or
    holding a `feature_content` text), else from `name: value` lines. Unknown names are dropped."""
    fields, aliases = list(fields), aliases or {}
    obj = find_json_object(text, [*fields, "feature_content", *aliases])
    if obj is not None and isinstance(obj.get("feature_content"), str):
        values = _record_lines(obj["feature_content"], fields)
    elif obj is not None:
        values = {}
        for key, value in obj.items():
            name = aliases.get(key, key)
            if name in fields:
                values[name] = _flatten(value).strip()
    else:
        values = _record_lines(clean(_FENCE.sub(lambda m: m.group(1), text)), fields)
    missing = [name for name in required if not values.get(name, "").strip()]
    if missing:
        raise BadOutput(f"generated record lacks {', '.join(missing)}", raw=text)
    return values


def _record_lines(text: str, fields: list[str]) -> dict[str, str]:
    """`性别: 男` / `主诉：…` lines; a line without a known name continues the previous value."""
    start = re.compile(rf"^\s*(?:[-*]\s*)?\**({'|'.join(map(re.escape, fields))})\**\s*[:：]\s*(.*)$")
    values: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        match = start.match(line)
        if match:
            current = match.group(1)
            values.setdefault(current, []).append(match.group(2).strip())
        elif current is not None and line.strip():
            values[current].append(line.strip())
    return {name: "\n".join(part for part in parts if part) for name, parts in values.items()}
