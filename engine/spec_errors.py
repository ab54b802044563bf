"""Reading a TOML spec and reporting its problems as one line, `file:line: key.path: message`.

Shared by every spec the project reads (the run spec, engine/spec.py; the train spec, trainers/spec.py), so
they fail the same way: a misspelt key gets "did you mean", a wrong value shows what was given, and a key
set with `--set` is named by that item (it has no line in the file): `--set lora.r=abc: lora.r: ...`.
"""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.errors import SpecError


def read_toml(path: str | Path, what: str = "spec") -> tuple[str, dict[str, Any]]:
    """(text, parsed table) of a TOML file; an unreadable file or bad TOML raises one SpecError line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from None


class SpecErrors:
    """Turns a key path and a message (or a pydantic error) into a SpecError with the key's line.

    `model` is the spec's root pydantic model: unknown keys are compared with the fields of the table they
    sit in. `overridden` maps the key path each `--set` item set (as `engine.overrides.apply_override`
    returns it) to the item."""

    def __init__(
        self,
        path: str | Path,
        text: str = "",
        model: type[BaseModel] | None = None,
        overridden: dict[tuple, str] | None = None,
    ):
        self.path = Path(path)
        self.model = model
        self.lines = key_lines(text)
        self.overridden = overridden or {}

    def at(self, loc: tuple | str, message: str) -> SpecError:
        """`where: key.path: message`; loc is a tuple of keys/indices or a dotted string."""
        loc = tuple(loc.split(".")) if isinstance(loc, str) else tuple(loc)
        return SpecError(
            f"{self._where(loc)}: {dotted(loc)}: {message}" if loc else f"{self.path}: {message}"
        )

    def _where(self, loc: tuple) -> str:
        """`file:line` of the key (or the nearest table above it), or `--set ITEM` when an override set
        it or created it (`--set run.typo.x=1` makes `run.typo`)."""
        for n in range(len(loc), 0, -1):
            key = loc[:n]
            if key in self.overridden:
                return f"--set {self.overridden[key]}"
            if key in self.lines:
                return f"{self.path}:{self.lines[key]}"
            below = next((item for k, item in self.overridden.items() if k[:n] == key), None)
            if below is not None:
                return f"--set {below}"
        return str(self.path)

    def from_validation(
        self, exc: ValidationError, prefix: tuple = (), fields: tuple[str, ...] = ()
    ) -> SpecError:
        """The first error of `exc` (a misspelt key first: it also shows up as a missing one)."""
        errors = exc.errors()
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = self._key_path(prefix + tuple(first["loc"]))
        if first["type"] == "extra_forbidden":
            known = list(fields) or self._known(loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            if hint:
                message = f"unknown key (did you mean {hint[0]!r}?)"
            else:
                message = "unknown key" + (f" (known: {', '.join(known)})" if 0 < len(known) <= 12 else "")
        elif first["type"] == "missing":
            message = "required key is missing"
        else:
            message = f"{first['msg']} (got {first.get('input')!r})"
        return self.at(loc, message)

    def _key_path(self, loc: tuple) -> tuple:
        """`loc` without what pydantic appends below a union-typed key (the member type: 'c.float')."""
        node: Any = self.model
        for n, part in enumerate(loc):
            if typing.get_origin(node) in (typing.Union, types.UnionType) and isinstance(part, str):
                return loc[:n]
            node = _inner(node, part)
            if node is None:
                break
        return loc

    def _known(self, loc: tuple) -> list[str]:
        """The field names of the table at `loc`, walking the root model (lists and dicts included)."""
        node: Any = self.model
        for part in loc:
            node = _inner(node, part)
            if node is None:
                return []
        return list(node.model_fields) if _is_model(node) else []


def _is_model(node: Any) -> bool:
    return isinstance(node, type) and issubclass(node, BaseModel)


def _inner(node: Any, part: Any) -> Any:
    """The type one step below `node` along `part` (a field name, a list index or a dict key)."""
    if _is_model(node):
        field = node.model_fields.get(str(part))
        return _unwrap(field.annotation) if field else None
    origin = typing.get_origin(node)
    if origin in (list, tuple) and isinstance(part, int):
        return _unwrap(typing.get_args(node)[0])
    if origin is dict:
        return _unwrap(typing.get_args(node)[1])
    return None


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X, so optional tables are walked too."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def dotted(loc: tuple) -> str:
    """('stages', 0, 'prompt') -> 'stages[0].prompt'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def key_lines(text: str) -> dict[tuple, int]:
    """Map key paths like ('stages', 0, 'prompt') to the line that sets them (tomllib gives none)."""
    lines: dict[tuple, int] = {}
    counters: dict[tuple, int] = {}
    table: tuple = ()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith(("'", '"')) else raw.strip()
        if line.startswith("[["):
            table = _table(line[2 : line.find("]]")], counters, array=True)
            lines.setdefault(table, number)
        elif line.startswith("["):
            table = _table(line[1 : line.find("]")], counters, array=False)
            lines.setdefault(table, number)
        elif "=" in line:
            key = tuple(part.strip().strip("\"'") for part in line.split("=", 1)[0].split("."))
            lines.setdefault(table + key, number)
    return lines


def _table(name: str, counters: dict[tuple, int], *, array: bool) -> tuple:
    """`[[stages.filters]]` -> ('stages', i, 'filters', j): arrays of tables address their latest element."""
    parts = [p.strip().strip("\"'") for p in name.split(".")]
    path: tuple = ()
    for n, part in enumerate(parts):
        path += (part,)
        if array and n == len(parts) - 1:
            counters[path] = counters.get(path, -1) + 1
            path += (counters[path],)
        elif path in counters:
            path += (counters[path],)
    return path
