"""`--set KEY=VALUE` overrides, shared by every command that takes them (run specs, train specs, export).

A value is read as a TOML literal (`true`, `3`, `0.5`, `"x"`, `[1, 2]`), else kept as plain text
(`out/try`). Dotted keys address nested tables: `lora.r=8`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from typing import Any

from engine.errors import SpecError


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, value); a malformed item raises one SpecError line."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. --set max_steps=2")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key.strip(), value


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Flat `{key: value}` for options that are not nested (exporter options)."""
    return dict(parse_override(item) for item in items)


def apply_override(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted `key` in the nested dict `raw`, creating tables on the way."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"--set {key}: {part!r} is not a table")
        node = child
    node[parts[-1]] = value
