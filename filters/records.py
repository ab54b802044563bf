"""What filters read besides the record in hand: text fields of a record and JSONL side files.

Every error is one line naming the file and line (or the record and field) and what to do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from engine.errors import SpecError
from engine.jsonl import numbered_jsonl

_MISSING = object()


def get_path(record: dict[str, Any], path: str, default: Any = None) -> Any:
    """`record["meta"]["finish_reason"]` for path "meta.finish_reason"; `default` when any step is absent."""
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def value_text(value: Any) -> str:
    """A field value as text: strings as they are, lists one item per line, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return "\n".join(value_text(item) for item in value)
    if value is None:
        return ""
    return orjson.dumps(value).decode()


def field_text(record: dict[str, Any], fields: Iterable[str], *, where: str = "record") -> str:
    """The text a similarity filter compares: the named fields joined by newlines.

    Raises SpecError when a field is absent: a misspelt field name would otherwise make every
    record look empty (and never similar), which is worse than stopping.
    """
    parts = []
    for name in fields:
        value = get_path(record, name, _MISSING)
        if value is _MISSING:
            rid = record.get("id", "?") if isinstance(record, dict) else "?"
            raise SpecError(f"{where}: record id={rid!r} has no field {name!r}; check the filter's `fields`")
        parts.append(value_text(value))
    return "\n".join(parts)


def resolve(path: str | Path, base_dir: Any = None) -> Path:
    """A config path, relative to the spec's folder when it is not absolute."""
    p = Path(path)
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p


def jsonl_texts(path: str | Path, fields: Iterable[str]) -> Iterator[tuple[Any, str]]:
    """(id, text of `fields`) per record of a JSONL file; the id falls back to "<file>:<line>"."""
    fields = list(fields)
    p = Path(path)
    for lineno, record in numbered_jsonl(p):
        rid = record.get("id", f"{p.name}:{lineno}")
        yield rid, field_text(record, fields, where=f"{p}:{lineno}")
