"""`--set KEY=VALUE` overrides, shared by every command that takes them (run specs, train specs, export),
and the one parser of a KEY=VALUE item (`split_item`, also eval's `--weight METRIC=NUMBER`).

A value is read as a TOML literal (`true`, `3`, `0.5`, `"x"`, `[1, 2]`), else kept as plain text
(`out/try`). Dotted keys address nested tables: `lora.r=8`; an element of an array of tables by its
`name` (or index): `stages.predict.k=6`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from typing import Any

from engine.errors import SpecError


def split_item(
    item: str, flag: str = "--set", shape: str = "KEY=VALUE", example: str = "max_steps=2"
) -> tuple[str, str]:
    """`key=value` -> (key, the value's text), for every option given as KEY=VALUE (`--set`, eval's
    `--weight METRIC=NUMBER`); a malformed item raises one SpecError line with an example."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"{flag} {item!r}: expected {shape}, e.g. {flag} {example}")
    return key.strip(), text


def literal(text: str) -> Any:
    """A value's text read as a TOML literal (`true`, `3`, `0.5`, `"x"`, `[1, 2]`), else kept as text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, value); a malformed item raises one SpecError line."""
    key, text = split_item(item)
    return key, literal(text)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Flat `{key: value}` for options that are not nested (exporter options)."""
    return dict(parse_override(item) for item in items)


def apply_override(raw: dict[str, Any], key: str, value: Any) -> tuple[str | int, ...]:
    """Set dotted `key` in the nested dict `raw`, creating tables on the way; returns the key path set.

    An array of tables is addressed by an element's `name` or by its index: `stages.predict.k` and
    `stages.0.k` both reach the `[[stages]]` table named `predict`, the first one; `stages.predict`
    itself becomes `("stages", 0)` in the returned path, as validation errors spell it.
    """
    parts = key.split(".")
    node: Any = raw
    path: tuple[str | int, ...] = ()
    for n, part in enumerate(parts):
        last = n == len(parts) - 1
        if isinstance(node, list):
            index = _element(node, part, key, path)
            path += (index,)
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        path += (part,)
        if last:
            node[part] = value
            break
        child = node.setdefault(part, {})
        if not isinstance(child, dict | list) or (isinstance(child, list) and not _tables(child)):
            raise SpecError(f"--set {key}: {part!r} is not a table")
        node = child
    return path


def _element(tables: list[Any], part: str, key: str, path: tuple[str | int, ...]) -> int:
    """The index of the table named `part` (or at index `part`) in an array of tables."""
    where = ".".join(map(str, path))
    names = [t.get("name") for t in tables if isinstance(t, dict)]
    if part in names:
        return names.index(part)
    if part.isdigit() and int(part) < len(tables):
        return int(part)
    known = ", ".join(str(n) for n in names if n is not None) or f"indexes 0-{len(tables) - 1}"
    raise SpecError(f"--set {key}: {where} has no table named {part!r} (names: {known})")


def _tables(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(item, dict) for item in items)
