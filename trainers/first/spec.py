"""The `[first]` table of a train spec -> FirstConfig, for `python -m engine train first SPEC`.

Keys are FirstConfig's fields; `[first.lora]` and `[first.sft]` are sub-tables; paths are read from the
spec file's folder; `--set key=value` overrides a key (dotted for sub-tables, values as TOML literals).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from pathlib import Path
from typing import Any

from engine.errors import SpecError
from engine.overrides import apply_override, parse_override
from trainers.first.trainer import FirstConfig, LoraSettings

PATH_KEYS = ("model", "store", "records", "output_dir", "tokenizer")


def load_first_config(path: Path, overrides: list[str] | None = None) -> FirstConfig:
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("first")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{path}: cannot read train spec ({exc})") from None
    if not isinstance(table, dict):
        raise SpecError(f"{path}: no [first] table; see docs/first.md")
    for pair in overrides or []:
        apply_override(table, *parse_override(pair))
    _check_keys(path, "first", table, FirstConfig)
    lora = table.pop("lora", {})
    if lora is not False:
        _check_keys(path, "first.lora", lora, LoraSettings)
    for key in PATH_KEYS:
        if isinstance(table.get(key), str) and table[key] and not Path(table[key]).is_absolute():
            table[key] = str((path.parent / table[key]).resolve())
    missing = [f.name for f in dataclasses.fields(FirstConfig) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.name not in table]  # fmt: skip
    if missing:
        raise SpecError(f"{path}: first.{missing[0]}: required key is missing")
    return FirstConfig(**table, lora=None if lora is False else LoraSettings(**lora))


def _check_keys(path: Path, where: str, table: dict[str, Any], cls: type) -> None:
    known = [f.name for f in dataclasses.fields(cls)]
    for key in table:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SpecError(f"{path}: {where}.{key}: unknown key{did}")
