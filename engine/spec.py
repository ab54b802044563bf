"""The run spec: TOML read with tomllib, validated with pydantic, hashed.

Errors are one line naming the file, the key path and its line (engine/spec_errors.py), e.g.
`runs/x/spec.toml:14: stages[0].promt: unknown key (did you mean 'prompt'?)`.
Generator- and filter-specific keys are validated by their own Config models.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import SpecError
from engine.model_cache import model_cache_dir
from engine.overrides import apply_override, parse_override
from engine.spec_errors import SpecErrors, read_toml

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
    limiter: str | None = Field(
        None,
        description="redis://HOST:PORT/DB: one rate limit per provider account, shared by every process "
        "and shard (docs/scale.md); default $ENGINE_REDIS_URL, else each process limits itself",
        pattern=r"^(redis|rediss|unix)://",
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
        return out_dir(self.spec, self.path)

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
        return stage_named(self.spec, self.path, name)


def stage_named(spec: Spec, path: Path, name: str) -> StageSpec:
    """The stage called `name`; SpecError naming the spec's stages otherwise."""
    for stage in spec.stages:
        if stage.name == name:
            return stage
    names = ", ".join(s.name for s in spec.stages)
    raise SpecError(f"{path}: no stage named {name!r} (stages: {names})")


def out_dir(spec: Spec, path: Path) -> Path:
    """The run's output folder: `[run] out` read from the spec's folder."""
    return (path.parent / spec.run.out).resolve()


def read_spec(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Spec, str, SpecErrors]:
    """(the spec, its text, its error reporter): read, overridden (`--set stages.NAME.key=value` items,
    see engine/overrides.py) and validated, with nothing built: no generator reads its prompts, no
    provider is made. What a reader of a run's files needs (`spec.toml:STAGE`, `engine view`)."""
    path = Path(path)
    text, data = read_toml(path)
    given = {}
    for item in overrides:
        key, value = parse_override(item)
        given[apply_override(data, key, value)] = f"--set {item}"
    err = SpecErrors(path, text, Spec, given)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise err.from_validation(exc) from None
    _check_out(spec, path, err)
    return spec, text, err


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> LoadedSpec:
    """`read_spec`, then every stage's generator and filters and every provider's Config built and checked."""
    path = Path(path)
    spec, text, err = read_spec(path, overrides)
    return LoadedSpec(path, spec, text, *_build(spec, path, err), overrides=tuple(overrides))


def _build(spec: Spec, path: Path, err: SpecErrors) -> tuple[dict[str, Any], dict[str, Any]]:
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
            generators[stage.name].check_providers(configs)
        except (ValueError, OSError) as exc:
            raise err.at(where, str(exc)) from None
        _check_filters(stage, i, path, err)
        if stage.input is not None and stage.input not in seen:
            _check_first_record(generators[stage.name], path.parent / stage.input, where, err)
        seen.append(stage.name)
    return generators, configs


def _check_out(spec: Spec, path: Path, err: SpecErrors) -> None:
    """`out` is a folder inside the spec's folder: a run never writes (or replays into) anything else."""
    base = path.parent.resolve()
    out = (base / spec.run.out).resolve()
    if out == base or not out.is_relative_to(base):
        hint = 'use a folder inside it, e.g. out = "out"'
        raise err.at(("run", "out"), f"{spec.run.out!r} is not a folder inside {base}; {hint}")


def _check_first_record(generator: Any, input_path: Path, where: tuple, err: SpecErrors) -> None:
    """Fail before any request when the input's first record lacks a field the prompt uses."""
    from engine.jsonl import read_jsonl

    first = next(read_jsonl(input_path), None)
    if first is None:
        raise err.at((*where, "input"), f"input file {input_path} holds no records")
    try:
        generator.check(first)
    except SpecError as exc:
        raise err.at((*where, "prompt"), f"{exc} (in {input_path.name})") from None


def _check_filters(stage: StageSpec, index: int, path: Path, err: SpecErrors) -> None:
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
