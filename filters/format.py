"""Answer format filter (kind "format"): the parsed answer has the declared shape, or it is dropped.

Generic by design: the config names list fields, which of them hold short names (vs. free-text points),
item limits and optionally a pydantic model (`schema = "pkg.module:Model"`). Harmless surface forms are
normalised in place first (numbering stripped, `A；B` / `A|B` / `A、B` strings split into lists) so the
same content written differently is kept; `split_items` and `render_numbered` are the reusable helpers.
Drop reasons name the first rule that failed.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.spec_errors import SpecErrors, dotted
from filters.base import Filter, FilterConfig, FilterResult, register
from filters.records import get_path

# A list number: `1.` `2、` `3)` `(4)` `（5）` `6:` `⑦` `⑴` `一、`. A dot or colon must not be followed by a
# digit, so that `36.7℃` or `2023.7.2` is never taken for a number. The one rule for list numbers: the
# evals' normalisation (and through it the task's answer parser) imports it from here.
NUMBER_MARK = r"(?:[(（]?\d{1,2}[)）]|\d{1,2}[.．、:：](?!\d)|[①-⑳⑴-⒇]|[一二三四五六七八九十]{1,3}[、.．])"
_NUMBERING_RE = re.compile(rf"^\s*(?:{NUMBER_MARK}|[-*•·])\s*")
_INNER_MARK_RE = re.compile(rf"(?:^|(?<=[\s；;。]))(?={NUMBER_MARK})")  # a numbered point starting mid-string
_NAME_SPLIT_RE = re.compile(r"[；;|、\n]+")
_TRAILING = "；;。.，,、：: \t\r\n"
_NAME_INNER_PUNCT = re.compile(r"[，,。；;！!？?：:\n]")

Style = Literal["name", "point"]


def strip_numbering(text: str) -> str:
    """`1. 肺炎` / `①肺炎` / `（2）肺炎` / `一、肺炎` / `- 肺炎` -> `肺炎`: a leading list mark and spaces."""
    return _NUMBERING_RE.sub("", text, count=1).strip()


def _clean_item(text: str) -> str:
    return strip_numbering(text).rstrip(_TRAILING).strip()


def _split_string(text: str, style: Style) -> list[str]:
    pieces = _NAME_SPLIT_RE.split(text) if style == "name" else text.splitlines()
    chunks = [chunk for piece in pieces for chunk in _INNER_MARK_RE.split(piece)]
    items = [_clean_item(chunk) for chunk in chunks]
    return [item for item in items if item]


def split_items(value: Any, style: Style = "point") -> list[Any]:
    """A list field in its canonical form: a list of stripped, un-numbered items.

    Strings are split: "name" style at `；;|、` and newlines (`"1. 高血压；2. 糖尿病"` -> two names);
    "point" style at newlines and at numbered markers (`"1. …；\\n2. …"` -> two points). List items are
    normalised one by one; an item that normalises to nothing stays as "" so the empty-item rule sees it;
    non-strings are left as they are.
    """
    if isinstance(value, str):
        return _split_string(value, style)
    if not isinstance(value, list | tuple):
        return value
    out: list[Any] = []
    for item in value:
        if isinstance(item, str):
            out.extend(_split_string(item, style) or [""])
        else:
            out.append(item)
    return out


def render_numbered(items: list[str], sep: str = "；\n") -> str:
    """`["a", "b"]` -> `"1. a；\\n2. b"`: the numbered-list form of a point field."""
    return sep.join(f"{i}. {item}" for i, item in enumerate(items, 1))


def load_schema(path: str) -> type[BaseModel]:
    """The pydantic model at "package.module:Class"; ValueError with the path when it cannot be loaded."""
    module_name, _, attr = path.partition(":")
    try:
        model = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(
            f"format filter: cannot load schema {path!r} ({exc}); use 'package.module:Class'"
        ) from None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ValueError(f"format filter: schema {path!r} is not a pydantic model")
    return model


class FormatConfig(FilterConfig):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    list_fields: list[str] = Field(default_factory=list, description="fields holding a list of items")
    name_fields: list[str] = Field(
        default_factory=list, description="list fields whose items are short names (no sentence punctuation)"
    )
    max_item_chars: dict[str, int] = Field(default_factory=dict, description="per list field: longest item")
    max_items: dict[str, int] = Field(default_factory=dict, description="per list field: most items")
    min_items: int = Field(default=1, ge=0, description="fewest items of every list field")
    required: list[str] = Field(
        default_factory=list, description="other fields that must be present, non-empty"
    )
    schema_: str | None = Field(default=None, alias="schema", description="pydantic model 'pkg.module:Class'")
    normalize: bool = Field(default=True, description="rewrite list fields into their canonical form first")
    drop_truncated: bool = Field(default=True, description="drop answers whose finish_reason is 'length'")
    finish_reason_field: str = "meta.finish_reason"
    outside_text_field: str = Field(
        default="meta.outside_text", description="generator's flag/text of extra text"
    )
    raw_text_field: str = Field(
        default="meta.raw_text", description="the raw answer, checked as one JSON object"
    )
    allow_outside_text: bool = False

    @model_validator(mode="after")
    def _known_fields(self) -> FormatConfig:
        for key in ("name_fields", "max_item_chars", "max_items"):
            unknown = set(getattr(self, key)) - set(self.list_fields)
            if unknown:
                raise ValueError(f"{key} names {sorted(unknown)} that are not in list_fields")
        return self


def outside_json(raw: str) -> str:
    """Text around the one JSON object of a raw answer (a ``` fence around it is allowed)."""
    text = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", raw.strip())
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return text.strip() or raw
    return (text[:start] + text[end + 1 :]).strip()


@register
class FormatFilter(Filter):
    name = "format"
    Config = FormatConfig

    def __init__(self, config: FormatConfig | None = None, *, base_dir: Any = None):
        super().__init__(config, base_dir=base_dir)
        self.schema = load_schema(self.config.schema_) if self.config.schema_ else None
        self._normalized = 0  # records whose list fields were rewritten into the canonical form

    def stats(self) -> dict[str, Any]:
        return {"normalized": self._normalized}

    def __call__(self, record: dict[str, Any]) -> FilterResult:
        cfg: FormatConfig = self.config
        if cfg.drop_truncated and get_path(record, cfg.finish_reason_field) == "length":
            return False, "truncated: finish_reason is 'length'"
        if not cfg.allow_outside_text:
            outside = self._outside_text(record)
            if outside:
                return False, f"outside text: {outside[:40]!r}"
        for name in [*cfg.list_fields, *cfg.required]:
            value = record.get(name)
            if value is None or value == "" or value == []:
                return False, f"missing field: {name!r} is absent or empty"
        if cfg.normalize:
            changed = False
            for name in cfg.list_fields:
                value = split_items(record[name], "name" if name in cfg.name_fields else "point")
                changed |= value != record[name]
                record[name] = value
            self._normalized += changed
        if self.schema is not None:
            failure = self._validate_schema(record)
            if failure:
                return False, failure
        for name in cfg.list_fields:
            failure = self._check_list(name, record[name])
            if failure:
                return False, failure
        return True

    def _outside_text(self, record: dict[str, Any]) -> str:
        flag = get_path(record, self.config.outside_text_field)
        if flag is not None:
            return flag if isinstance(flag, str) else ("(flagged by the generator)" if flag else "")
        raw = get_path(record, self.config.raw_text_field)
        return outside_json(raw) if isinstance(raw, str) else ""

    def _validate_schema(self, record: dict[str, Any]) -> str | None:
        data = {key: record[key] for key in self.schema.model_fields if key in record}
        try:
            answer = self.schema.model_validate(data)
        except ValidationError as exc:
            loc, message = SpecErrors(model=self.schema).describe(exc)
            where = f"{self.schema.__name__}.{dotted(loc)}" if loc else self.schema.__name__
            return f"schema: {where}: {message}"
        if self.config.normalize:
            record.update({key: value for key, value in answer.model_dump().items() if key in data})
        return None

    def _check_list(self, name: str, items: Any) -> str | None:
        cfg: FormatConfig = self.config
        if not isinstance(items, list):
            return f"not a list: {name} is {type(items).__name__}"
        if len(items) < cfg.min_items:
            return f"too few items: {name} has {len(items)}, fewer than {cfg.min_items}"
        most = cfg.max_items.get(name)
        if most is not None and len(items) > most:
            return f"too many items: {name} has {len(items)}, more than {most}"
        longest = cfg.max_item_chars.get(name)
        for i, item in enumerate(items):
            where = f"{name}[{i}]"
            if not isinstance(item, str):
                return f"not a string: {where}"
            if not item.strip():
                return f"empty item: {where}"
            if longest is not None and len(item) > longest:
                return f"item too long: {where} has {len(item)} chars, more than {longest}"
            if _NUMBERING_RE.match(item):
                return f"numbering: {where} starts with {item[:8]!r}"
            if name in cfg.name_fields:
                if item[-1] in _TRAILING:
                    return f"trailing punctuation: {where} {item!r}"
                if _NAME_INNER_PUNCT.search(item):
                    return f"not a short name: {where} {item[:30]!r}"
            elif split_items(render_numbered([item]), "point") != [item]:
                return f"not renderable: {where} changes when rendered as a numbered list {item[:30]!r}"
        return None
