"""A declared field mapping (TOML, pydantic-validated) from a source dataset's rows to task records.

    name = "zmdo"                       # optional: written as each record's `source`
    id_template = "zmdo-{index:04d}"    # or: id = "case_id" (a field path)
    required = ["主诉"]                  # lines whose value may not be empty
    diseases = "diseases"               # optional: a list field, or a string split at ；;|、
    reason = "diagnoses[].reason"       # optional: `[]` maps over a list
    [[lines]]
    label = "主诉"
    field = "condition.chiefComplaint"  # or fields = [...]: non-empty values joined with "；"

A field path is looked up whole first (a CSV column named "condition.chiefComplaint"), then split at
dots; `name[]` maps the rest of the path over a list. Null values render as empty lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.spec_errors import SpecErrors, read_toml
from filters.format import split_items

_MISSING = object()


class MappingError(ValueError):
    """One source row cannot be mapped; the message names the field and the reason."""


class Line(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(min_length=1, description="the line's name in feature_content, e.g. 主诉")
    field: str | None = Field(None, description="source field path")
    fields: list[str] | None = Field(None, min_length=1, description="several paths, joined with `join`")

    @model_validator(mode="after")
    def _one(self) -> Line:
        if (self.field is None) == (self.fields is None):
            raise ValueError(f"line {self.label!r}: give exactly one of `field` or `fields`")
        return self

    @property
    def paths(self) -> list[str]:
        return [self.field] if self.field is not None else list(self.fields or [])


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="written as every record's `source` field")
    id: str | None = Field(None, description="field path of the record id")
    id_template: str = Field("{index}", description="id when `id` is not set; {index} is the row number")
    lines: list[Line] = Field(min_length=1, description="feature_content lines, in order")
    required: list[str] = Field(default_factory=list, description="labels whose value may not be empty")
    diseases: str | None = Field(None, description="field path of the disease names")
    reason: str | None = Field(None, description="field path of the reason points, e.g. diagnoses[].reason")
    join: str = Field("；", description="between the values of a line with several fields")
    label_separator: str = Field(": ", description="between a line's label and its value")

    @model_validator(mode="after")
    def _labels(self) -> Mapping:
        labels = [line.label for line in self.lines]
        unknown = sorted(set(self.required) - set(labels))
        if unknown:
            raise ValueError(f"required labels {unknown} are not among the lines' labels")
        if len(set(labels)) != len(labels):
            raise ValueError("two lines have the same label")
        return self

    def paths(self) -> list[str]:
        """Every field path the mapping reads (checked against the dataset's columns up front)."""
        out = [p for line in self.lines for p in line.paths]
        return out + [p for p in (self.id, self.diseases, self.reason) if p]


def load_mapping(path: str | Path) -> Mapping:
    """The mapping in a TOML file; SpecError (one line, `file:line: key: message`) when it is unreadable
    or invalid, as for every spec (engine/spec_errors.py)."""
    text, data = read_toml(path, "mapping")
    try:
        return Mapping.model_validate(data)
    except ValidationError as exc:
        raise SpecErrors(path, text, Mapping).from_validation(exc) from None


def get_path(row: Any, path: str) -> Any:
    """The value at `path` (see the module doc); _MISSING when a key is absent."""
    if isinstance(row, dict) and path in row:
        return row[path]
    head, dot, rest = path.partition(".")
    if head.endswith("[]"):
        items = row.get(head[:-2], _MISSING) if isinstance(row, dict) else _MISSING
        if items is _MISSING or items is None:
            return items
        if not isinstance(items, list):
            raise MappingError(f"{head[:-2]!r} is not a list")
        return [get_path(item, rest) if rest else item for item in items]
    if not isinstance(row, dict) or head not in row:
        return _MISSING
    value = row[head]
    return get_path(value, rest) if dot and value is not None else value


def has_path(row: dict[str, Any], path: str) -> bool:
    try:
        return get_path(row, path) is not _MISSING
    except MappingError:
        return True  # present, but the wrong shape for this row: reported per row


def _text(value: Any, where: str) -> str:
    if value is None or value is _MISSING:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise MappingError(f"{where}: expected text, got {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # CSV/Parquet turn ages into 49.0
    return str(value).strip()


def _items(value: Any, where: str, style: str) -> list[str]:
    if value is None or value is _MISSING:
        return []
    items = split_items(value, style) if isinstance(value, str | list) else None
    if items is None:
        raise MappingError(f"{where}: expected a list or text, got {type(value).__name__}")
    return [_text(item, where) for item in items if _text(item, where)]


def map_row(mapping: Mapping, row: dict[str, Any], index: int) -> dict[str, Any]:
    """One task record (`id`, `feature_content`, optional `diseases`, `reason`, `source`); MappingError."""
    values: dict[str, str] = {}
    for line in mapping.lines:
        parts = [_text(get_path(row, p), f"field {p!r}") for p in line.paths]
        values[line.label] = mapping.join.join(part for part in parts if part)
    empty = [label for label in mapping.required if not values[label]]
    if empty:
        raise MappingError(f"required line {'、'.join(empty)} is empty")
    if mapping.id:
        rid = get_path(row, mapping.id)
        if rid is None or rid is _MISSING or rid == "":
            raise MappingError(f"id field {mapping.id!r} is empty")
    else:
        rid = mapping.id_template.format(index=index)
    record: dict[str, Any] = {
        "id": rid,
        "feature_content": "\n".join(f"{k}{mapping.label_separator}{v}" for k, v in values.items()),
    }
    if mapping.diseases:
        record["diseases"] = _items(get_path(row, mapping.diseases), f"field {mapping.diseases!r}", "name")
        if not record["diseases"]:
            raise MappingError(f"diseases field {mapping.diseases!r} is empty")
    if mapping.reason:
        record["reason"] = _items(get_path(row, mapping.reason), f"field {mapping.reason!r}", "point")
        if not record["reason"]:
            raise MappingError(f"reason field {mapping.reason!r} is empty")
    if mapping.name:
        record["source"] = mapping.name
    return record
