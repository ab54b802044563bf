"""The run spec: TOML read with tomllib, validated with pydantic, hashed.

Errors are one line naming the file, the key path and its line, e.g.
`runs/x/spec.toml:14: stages[0].promt: unknown key (did you mean 'prompt'?)`.
Generator- and filter-specific keys are validated by their own Config models.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import SpecError
from engine.model_cache import model_cache_dir
from engine.overrides import apply_override, parse_override

STAGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a folder name that cannot be `.` or `..`


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    out: str = Field("out", description="output folder, relative to the spec file")
    description: str = ""
    cache: str | None = Field(
        None,
        description="model cache folder, relative to the spec file; default: the shared model cache "
        "($ENGINE_CACHE_DIR, else ~/.cache/distill-engine; see docs/local.md)",
    )
    seed: int = 0
    max_cost: float | None = Field(None, description="stop cleanly once the run's cost passes this")
    max_tokens: int | None = Field(None, description="stop cleanly once the run's tokens pass this")
    max_in_flight: int | None = Field(
        None, description="items in flight per stage; default 2x the concurrency"
    )
    grace_s: float = Field(
        5.0, ge=0, description="after SIGINT/SIGTERM, seconds requests in flight get before being cancelled"
    )


class StageSpec(BaseModel):
    """Keys every stage has; the generator's own keys are validated by its Config."""

    model_config = ConfigDict(extra="allow")

    name: str
    generator: str
    provider: str | None = None
    input: str | None = Field(
        None, description="a JSONL file (relative to the spec) or an earlier stage's name"
    )
    samples: int = Field(1, ge=1, description="answers per input record")
    params: dict[str, Any] = Field({}, description="sampling params for this stage over the provider's")
    max_bad_output: int = Field(3, ge=1, description="attempts per item when the answer cannot be parsed")
    filters: list[dict[str, Any]] = []
    limit: int | None = Field(None, ge=1, description="use only the first N input records")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: RunConfig
    providers: dict[str, dict[str, Any]] = {}
    stages: list[StageSpec]


@dataclass
class LoadedSpec:
    """A validated spec plus where it came from and everything built from it."""

    path: Path
    spec: Spec
    text: str
    generators: dict[str, Any]  # stage name -> Generator
    provider_configs: dict[str, Any]  # provider name -> ProviderConfig
    overrides: tuple[str, ...] = ()  # the `--set KEY=VALUE` items applied over the file

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def out_dir(self) -> Path:
        return (self.base_dir / self.spec.run.out).resolve()

    @property
    def cache_dir(self) -> Path:
        if self.spec.run.cache is None:
            return model_cache_dir()
        return (self.base_dir / self.spec.run.cache).expanduser().resolve()

    @property
    def hash(self) -> str:
        """The spec file's text plus the `--set` overrides applied to it."""
        blob = self.text + "".join(f"\n--set {item}" for item in self.overrides)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def stage(self, name: str) -> StageSpec:
        for stage in self.spec.stages:
            if stage.name == name:
                return stage
        names = ", ".join(s.name for s in self.spec.stages)
        raise SpecError(f"{self.path}: no stage named {name!r} (stages: {names})")


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> LoadedSpec:
    """Read, override (`--set stages.NAME.key=value` items, see engine/overrides.py) and validate."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from None
    overridden = {}
    for item in overrides:
        key, value = parse_override(item)
        overridden[apply_override(data, key, value)] = item
    err = _Errors(path, text, overridden)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise err.from_validation(exc) from None
    _check_out(spec, path, err)
    return LoadedSpec(path, spec, text, *_build(spec, path, err), overrides=tuple(overrides))


def _build(spec: Spec, path: Path, err: _Errors) -> tuple[dict[str, Any], dict[str, Any]]:
    from engine.providers import kinds, provider_class
    from generators import get_generator

    configs = {}
    for name, table in spec.providers.items():
        kind = table.get("kind")
        if kind not in kinds():
            raise err.at(("providers", name, "kind"), f"expected one of {', '.join(kinds())}, got {kind!r}")
        cls = provider_class(kind).Config
        try:
            config = cls.model_validate(table)
        except ValidationError as exc:
            raise err.from_validation(
                exc, prefix=("providers", name), fields=tuple(cls.model_fields)
            ) from None
        # local files named in a provider table (adapter, model, tokenizer) are relative to the spec
        paths = {
            f: str((path.parent / Path(v).expanduser()).resolve())
            for f in cls.path_fields
            if (v := getattr(config, f))
        }
        configs[name] = config.model_copy(update=paths)
    seen: list[str] = []
    generators = {}
    for i, stage in enumerate(spec.stages):
        where = ("stages", i)
        if not STAGE_NAME.match(stage.name) or stage.name in seen:
            raise err.at(
                (*where, "name"),
                f"stage name {stage.name!r} must be unique, use [A-Za-z0-9_.-] and not start with '.'",
            )
        try:
            cls = get_generator(stage.generator)
        except KeyError as exc:
            raise err.at((*where, "generator"), str(exc.args[0])) from None
        if stage.provider is None and cls.needs_provider:
            raise err.at(where, f"stage {stage.name!r} needs a `provider` (one of: {', '.join(configs)})")
        if stage.provider is not None and stage.provider not in configs:
            known = ", ".join(configs) or "none declared"
            raise err.at((*where, "provider"), f"unknown provider {stage.provider!r} (known: {known})")
        if cls.needs_input and stage.input is None:
            raise err.at(where, f"stage {stage.name!r} needs an `input` (a JSONL file or an earlier stage)")
        if stage.input is not None and stage.input not in seen and not (path.parent / stage.input).is_file():
            raise err.at(
                (*where, "input"),
                f"input {stage.input!r} is neither an earlier stage ({', '.join(seen) or 'none'}) "
                f"nor a file next to the spec",
            )
        try:
            config = cls.Config.model_validate(stage.options)
        except ValidationError as exc:
            fields = (*cls.Config.model_fields, *StageSpec.model_fields)
            raise err.from_validation(exc, prefix=where, fields=fields) from None
        try:
            generators[stage.name] = cls(config, stage=stage, base_dir=path.parent, seed=spec.run.seed)
        except (ValueError, OSError) as exc:
            raise err.at(where, str(exc)) from None
        _check_filters(stage, i, path, err)
        if stage.input is not None and stage.input not in seen:
            _check_first_record(generators[stage.name], path.parent / stage.input, where, err)
        seen.append(stage.name)
    return generators, configs


def _check_out(spec: Spec, path: Path, err: _Errors) -> None:
    """`out` is a folder inside the spec's folder: a run never writes (or replays into) anything else."""
    base = path.parent.resolve()
    out = (base / spec.run.out).resolve()
    if out == base or not out.is_relative_to(base):
        hint = 'use a folder inside it, e.g. out = "out"'
        raise err.at(("run", "out"), f"{spec.run.out!r} is not a folder inside {base}; {hint}")


def _check_first_record(generator: Any, input_path: Path, where: tuple, err: _Errors) -> None:
    """Fail before any request when the input's first record lacks a field the prompt uses."""
    from engine.store import read_jsonl

    first = next(read_jsonl(input_path), None)
    if first is None:
        raise err.at((*where, "input"), f"input file {input_path} holds no records")
    try:
        generator.check(first)
    except SpecError as exc:
        raise err.at((*where, "prompt"), f"{exc} (in {input_path.name})") from None


def _check_filters(stage: StageSpec, index: int, path: Path, err: _Errors) -> None:
    from filters.base import filter_config

    for j, table in enumerate(stage.filters):
        where = ("stages", index, "filters", j)
        options = dict(table)
        kind = options.pop("kind", None)
        if kind is None:
            raise err.at(where, "a filter table needs `kind`")
        try:
            filter_config(kind, options)
        except ValidationError as exc:
            raise err.from_validation(exc, prefix=where) from None
        except (ValueError, OSError) as exc:
            raise err.at(where, str(exc)) from None


class _Errors:
    """Turns validation errors into one line with the key path and the line it sits on."""

    def __init__(self, path: Path, text: str, overridden: dict[tuple, str] | None = None):
        self.path = path
        self.lines = _key_lines(text)
        self.overridden = overridden or {}  # key path -> the `--set` item that set it

    def at(self, loc: tuple, message: str) -> SpecError:
        return SpecError(f"{self._where(loc)}: {_dotted(loc)}: {message}")

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
        errors = exc.errors()
        # a misspelt key also shows up as a missing one: name the misspelling
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = prefix + tuple(first["loc"])
        if first["type"] == "extra_forbidden":
            key = str(loc[-1])
            known = fields or (*RunConfig.model_fields, *Spec.model_fields)
            hint = difflib.get_close_matches(key, known, n=1)
            message = "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        elif first["type"] == "missing":
            message = "required key is missing"
        else:
            message = f"{first['msg']} (got {first.get('input')!r})"
        return self.at(loc, message)


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _key_lines(text: str) -> dict[tuple, int]:
    """Map key paths like ('stages', 0, 'prompt') to the line that sets them (tomllib gives none)."""
    lines: dict[tuple, int] = {}
    counters: dict[tuple, int] = {}
    table: tuple = ()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith(("'", '"')) else raw.strip()
        if line.startswith("[["):
            table = _resolve(line[2 : line.find("]]")], counters, array=True)
            lines.setdefault(table, number)
        elif line.startswith("["):
            table = _resolve(line[1 : line.find("]")], counters, array=False)
            lines.setdefault(table, number)
        elif "=" in line:
            key = tuple(part.strip().strip("\"'") for part in line.split("=", 1)[0].split("."))
            lines.setdefault(table + key, number)
    return lines


def _resolve(name: str, counters: dict[tuple, int], *, array: bool) -> tuple:
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
