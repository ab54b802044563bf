"""The train spec: one TOML file, validated by pydantic, naming model, data, LoRA, evaluation, and one table
per training method (`[sft]`, `[dpo]`, `[first]`; the methods are registered in trainers/methods.py).

A method's table takes the fields of its config dataclass, a TRL config extended with our keys (e.g.
`SftConfig(SFTConfig)`): our keys are type-checked when the spec loads, TRL's by name (TRL checks their
values when the config is built). Every path is made absolute against the spec file's folder once, here,
when the spec loads (paths given with `--set` too). Errors are one line, `file:line: key.path: message`
(engine/spec_errors.py), during loading and later (`spec.fail`).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    create_model,
)

from engine.errors import SpecError
from engine.overrides import apply_override, parse_override
from engine.spec_errors import SpecErrors, read_toml
from engine.stage_ref import split_stage_ref
from generators.medical.format import FormatSpec, PromptFormat

# Our defaults for TRL fields; a key in the method's table wins. Why each differs from TRL: no tracker is
# installed (report_to), the loss curve wants every step (logging_steps), checkpoints must exist for the
# post-training evaluation (save_strategy/save_steps).
TRAINER_DEFAULTS: dict[str, Any] = {
    "report_to": "none",
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 50,
}
# Without a CUDA GPU: TRL defaults to bf16 mixed precision, which needs a GPU unless use_cpu is set, and
# is slower than fp32 on most CPUs.
CPU_DEFAULTS: dict[str, Any] = {"use_cpu": True, "bf16": False}
# TRL fields that hold a path, read from the spec's folder like ours (ours say so in their metadata).
TRL_PATH_FIELDS = ("resume_from_checkpoint",)


def _from_spec_folder(value: str, info: ValidationInfo) -> str:
    """A relative path made absolute against the spec's folder (given as validation context)."""
    folder = (info.context or {}).get("spec_dir")
    if not value or folder is None:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (Path(folder) / path).resolve())


def _source_from_spec_folder(value: str, info: ValidationInfo) -> str:
    stage_ref = split_stage_ref(value)
    if stage_ref is not None:  # 'run/spec.toml:stage': a run stage's kept records
        return f"{_from_spec_folder(stage_ref[0], info)}:{stage_ref[1]}"
    return _from_spec_folder(value, info)


SpecPath = Annotated[str, AfterValidator(_from_spec_folder)]
Source = Annotated[str, AfterValidator(_source_from_spec_folder)]  # a file, a glob or 'spec.toml:stage'


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(FormatSpec):
    """Where the records come from, and (FormatSpec's keys: prompts_dir, demos, k, demo_choice,
    reason_first) how a record becomes a prompt and an answer: the task's one prompt format."""

    train: list[Source] = Field(
        default_factory=list, description="JSONL files/globs or 'run/spec.toml:stage'"
    )
    validation: list[Source] = Field(default_factory=list, description="held-out records; else a fraction")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="share of train held out when no files")
    max_records: int = Field(0, ge=0, description="use only the first N training records (0 = all)")
    pairs: list[Source] = Field(default_factory=list, description="DPO: prompt/chosen/rejected JSONL files")
    teacher: list[Source] = Field(default_factory=list, description="DPO: teacher answer records (chosen)")
    student: list[Source] = Field(default_factory=list, description="DPO: student answer records (rejected)")
    pairs_agree_on: Literal["label", "answer"] = Field(
        "label", description="what makes a pair agree (dropped)"
    )
    # FormatSpec's two paths, made absolute at load like every other path of the spec
    prompts_dir: SpecPath = Field(
        "", description="folder of prompt files; each replaces the built-in file of the same name"
    )
    demos: SpecPath = Field("", description="labelled demo pool, JSONL (feature_content, diseases, reason)")


class TestSetSpec(_Strict):
    """Training refuses records whose input matches one of these (unless `force = true`)."""

    __test__ = False  # not a pytest class
    files: list[Source] = Field(default_factory=list)
    field: str = "feature_content"


class LoraSpec(_Strict):
    enabled: bool = Field(True, description="false: full fine-tuning (every weight trained, no adapter)")
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    qlora: bool = Field(False, description="4-bit base via bitsandbytes (needs a CUDA GPU)")


class EvalSpec(_Strict):
    """Post-training evaluation of every checkpoint on the validation records."""

    hook: str = Field("", description="'module:function'(model, tokenizer, records) -> {metric: value}")
    metric: str = Field("eval_loss", description="metric that picks the best checkpoint")
    higher_is_better: bool = False


class TrainSpec(_Strict):
    """The keys every method shares; `load_spec` adds one table per registered method."""

    base_model: SpecPath = Field("", description="local HF folder; '' = the bundled SmolLM2-135M-Instruct")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    seed: int = 0
    force: bool = Field(False, description="train even when records overlap the test set")
    data: DataSpec = Field(default_factory=DataSpec)
    test_set: TestSetSpec = Field(default_factory=TestSetSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    _path: Path = PrivateAttr(default=Path("train.toml"))
    _errors: SpecErrors | None = PrivateAttr(default=None)

    @property
    def path(self) -> Path:
        return self._path

    def section(self, method: str) -> Any:
        """The method's table (a pydantic model of its config dataclass's fields)."""
        return getattr(self, method)

    def trainer_args(self, method: str) -> dict[str, Any]:
        """Keyword arguments of the method's config dataclass: our defaults, then the spec's keys."""
        import torch

        section = self.section(method)
        ours = {name: getattr(section, name) for name in own_fields(config_class(method))}
        given = section.model_dump(exclude_unset=True)
        platform = {} if torch.cuda.is_available() else CPU_DEFAULTS
        return {**TRAINER_DEFAULTS, **platform, "seed": self.seed, **ours, **given}

    def prompt_format(self) -> PromptFormat:
        """The prompt format of `[data]` (its paths absolute since loading; demos seeded by `seed`)."""
        return self.data.resolve(self._path.parent, self.seed)

    def fail(self, key: str, message: str) -> SpecError:
        """A SpecError naming this spec's file, the key's line and the key."""
        errors = self._errors or SpecErrors(self._path)
        return errors.at(key, message)


def config_class(method: str) -> type:
    from trainers.methods import get_method

    return get_method(method).config_class()


def own_fields(config_cls: type) -> list[str]:
    """The fields our config dataclass adds to (or redefines over) the TRL config it extends."""
    names: list[str] = []
    for klass in config_cls.__mro__:
        if klass.__module__.split(".")[0] in ("trl", "transformers") or klass is object:
            break
        names += [n for n in vars(klass).get("__annotations__", {}) if n not in names]
    return names


def section_model(method: str, config_cls: type) -> type[BaseModel]:
    """The pydantic model of a method's table: our fields typed, with their defaults and help; TRL's fields
    accepted by name (TRL checks their values when the config is built)."""
    hints = typing.get_type_hints(config_cls)
    ours = own_fields(config_cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        if f.name in ours:
            is_path = bool(f.metadata.get("path"))
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            help_text = f.metadata.get("help")
            annotation = SpecPath if is_path else hints[f.name]
            fields[f.name] = (annotation, Field(default, description=help_text, validate_default=is_path))
        elif f.name in TRL_PATH_FIELDS:
            fields[f.name] = (SpecPath | None, None)
        else:
            fields[f.name] = (Any, None)
    return create_model(f"{method.title()}Table", __config__=ConfigDict(extra="forbid"), **fields)


@functools.cache
def spec_model() -> type[TrainSpec]:
    """TrainSpec with one table per registered method."""
    from trainers.methods import METHODS

    tables: dict[str, Any] = {}
    for name, method in METHODS.items():
        table = section_model(name, method.config_class())
        tables[name] = (table, Field(default_factory=table))
    return create_model("TrainSpec", __base__=TrainSpec, **tables)


def load_spec(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), command: str = "sft"
) -> TrainSpec:
    """Read, override and validate a train spec, paths made absolute; a problem raises one SpecError line.

    `--set` overrides (`overrides`) apply before validation; a key that is no top-level field belongs to
    `command`'s table."""
    path = Path(path)
    model = spec_model()
    if command not in model.model_fields:
        raise SpecError(f"unknown training method {command!r}")
    text, raw = read_toml(path, "train spec")
    given = {}
    for item in overrides:
        key, value = parse_override(item)
        if key.split(".")[0] not in model.model_fields:
            key = f"{command}.{key}"
        given[apply_override(raw, key, value)] = f"--set {item}"
    errors = SpecErrors(path, text, model, given)
    for name, field in model.model_fields.items():  # absent tables validate too: their paths need resolving
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            raw.setdefault(name, {})
    try:
        spec = model.model_validate(raw, context={"spec_dir": path.resolve().parent})
    except ValidationError as exc:
        raise errors.from_validation(exc) from None
    spec._path, spec._errors = path.resolve(), errors
    return spec
