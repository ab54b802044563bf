"""Reading a TOML spec and reporting its problems as one line, `file:line: key.path: message`.

Shared by every config the project reads (the run spec, engine/spec.py; the train spec, trainers/spec.py;
an import mapping, sources/mapping.py; a provider table, engine/providers; a command's options: filters,
eval, export), so they fail the same way: a misspelt key gets "did you mean", a wrong value shows what was
given, and a key set outside the file is named by where it was set: `--set lora.r=abc: lora.r: ...`,
`--threshold: threshold: ...`.
"""

from __future__ import annotations

import argparse
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
    """Turns a key path and a message (or a pydantic error) into a SpecError naming where the key was set.

    `path` and `text`: the file (None for keys that come from no file: a command's options, a provider
    table built in code). `model` is the root pydantic model: unknown keys are compared with the fields of
    the table they sit in. `given` maps key paths set outside the file to where they were set: the `--set`
    item (`--set lora.r=abc`, as `engine.overrides.apply_override` returns the path) or the flag."""

    def __init__(
        self,
        path: str | Path | None = None,
        text: str = "",
        model: type[BaseModel] | None = None,
        given: dict[tuple, str] | None = None,
    ):
        self.path = Path(path) if path is not None else None
        self.model = model
        self.lines = key_lines(text)
        self.given = given or {}

    def at(self, loc: tuple | str, message: str) -> SpecError:
        """`where: key.path: message`; loc is a tuple of keys/indices or a dotted string."""
        loc = tuple(loc.split(".")) if isinstance(loc, str) else tuple(loc)
        where = self._where(loc)
        parts = [p for p in (where, dotted(loc), message) if p]
        return SpecError(": ".join(parts))

    def _where(self, loc: tuple) -> str:
        """`file:line` of the key (or the nearest table above it), or where it was given when an override
        set it or created it (`--set run.typo.x=1` makes `run.typo`); "" when neither is known."""
        for n in range(len(loc), 0, -1):
            key = loc[:n]
            if key in self.given:
                return self.given[key]
            if key in self.lines and self.path is not None:
                return f"{self.path}:{self.lines[key]}"
            below = next((where for k, where in self.given.items() if k[:n] == key), None)
            if below is not None:
                return below
        return str(self.path) if self.path is not None else ""

    def from_validation(
        self, exc: ValidationError, prefix: tuple = (), fields: tuple[str, ...] = ()
    ) -> SpecError:
        """The first error of `exc` (a misspelt key first: it also shows up as a missing one)."""
        loc, message = self.describe(exc, prefix, fields)
        return self.at(loc, message)

    def describe(
        self, exc: ValidationError, prefix: tuple = (), fields: tuple[str, ...] = ()
    ) -> tuple[tuple, str]:
        """(key path, message) of the first error of `exc`, for a caller that words the line itself."""
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
            message = first["msg"].removeprefix("Value error, ")  # a validator's own ValueError says it all
            if not isinstance(first.get("input"), dict):  # a whole table is no help to show
                message += f" (got {_shown(first.get('input'))})"
        return loc, message

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


def flag_errors(parser: argparse.ArgumentParser) -> SpecErrors:
    """The reporter for a config a command builds from its flags: each key is named by its flag."""
    return SpecErrors(given={(a.dest,): a.option_strings[-1] for a in parser._actions if a.option_strings})


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
