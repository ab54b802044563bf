"""The train spec: one TOML file, validated by pydantic, naming model, data, LoRA, TRL settings and output.

Every default lives here. The `[sft]` and `[dpo]` tables take our own keys (`output_dir`, `mode`,
`init_adapter`) plus any field of TRL's SFTConfig / DPOConfig, which is passed through untouched.
Relative paths are read from the spec file's folder. `--set key=value` overrides apply before validation.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model
from trl import DPOConfig, SFTConfig

from engine.errors import SpecError
from engine.overrides import apply_override, parse_override

Command = Literal["sft", "dpo"]

# Our defaults for TRL fields; a key in the spec's [sft]/[dpo] table wins. Why each differs from TRL:
# no tracker is installed (report_to), the loss curve wants every step (logging_steps), checkpoints must
# exist for the post-training evaluation (save_strategy/save_steps).
TRAINER_DEFAULTS: dict[str, Any] = {
    "report_to": "none",
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 50,
}
# Without a CUDA GPU: TRL defaults to bf16 mixed precision, which needs a GPU unless use_cpu is set, and
# is slower than fp32 on most CPUs.
CPU_DEFAULTS: dict[str, Any] = {"use_cpu": True, "bf16": False}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    """Where the records come from and how a record becomes a prompt and an answer."""

    train: list[str] = Field(default_factory=list, description="JSONL files/globs or 'run/spec.toml:stage'")
    validation: list[str] = Field(default_factory=list, description="held-out records; else a fraction")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="share of train held out when no files")
    max_records: int = Field(0, ge=0, description="use only the first N training records (0 = all)")
    pairs: list[str] = Field(default_factory=list, description="DPO: prompt/chosen/rejected JSONL files")
    teacher: list[str] = Field(default_factory=list, description="DPO: teacher answer records (chosen)")
    student: list[str] = Field(default_factory=list, description="DPO: student answer records (rejected)")
    pairs_agree_on: Literal["label", "answer"] = Field(
        "label", description="what makes a pair agree (dropped)"
    )
    id_field: str = "id"
    input_field: str = "feature_content"
    label_field: str = "diseases"
    reason_field: str = "reason"
    reason_first: bool = Field(True, description="answer JSON lists the reason before the label")
    prompts_dir: str = Field("", description="folder with system.txt, joint.txt, diseases.txt, reasons.txt")
    demos: str = Field("", description="JSONL of records shown as few-shot demos in the user prompt")
    num_demos: int = Field(0, ge=0)


class TestSetSpec(_Strict):
    """Training refuses records whose input matches one of these (unless `force = true`)."""

    __test__ = False  # not a pytest class
    files: list[str] = Field(default_factory=list)
    field: str = "feature_content"


class LoraSpec(_Strict):
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


_OWN_SFT = {
    "output_dir": (str, "out/sft"),
    "mode": (Literal["joint", "split"], "joint"),
    "init_adapter": (str, ""),
}
_OWN_DPO = {"output_dir": (str, "out/dpo"), "init_adapter": (str, "")}


def _section(name: str, config_cls: type, own: dict[str, tuple]) -> type[BaseModel]:
    passthrough = {
        f.name: (Any, None) for f in dataclasses.fields(config_cls) if f.init and f.name not in own
    }
    return create_model(name, __config__=ConfigDict(extra="forbid"), **own, **passthrough)


SftSection = _section("SftSection", SFTConfig, _OWN_SFT)
DpoSection = _section("DpoSection", DPOConfig, _OWN_DPO)


class TrainSpec(_Strict):
    base_model: str = Field("", description="local HF folder; '' = the bundled SmolLM2-135M-Instruct")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    seed: int = 0
    force: bool = Field(False, description="train even when records overlap the test set")
    data: DataSpec = Field(default_factory=DataSpec)
    test_set: TestSetSpec = Field(default_factory=TestSetSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    sft: SftSection = Field(default_factory=SftSection)  # type: ignore[valid-type]
    dpo: DpoSection = Field(default_factory=DpoSection)  # type: ignore[valid-type]
    _path: Path = PrivateAttr(default=Path("train.toml"))

    @property
    def path(self) -> Path:
        return self._path

    def resolve(self, path: str) -> Path:
        """A spec path made absolute against the spec file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self._path.parent / p).resolve()

    def trainer_args(self, command: Command) -> dict[str, Any]:
        """The TRL config keyword arguments of `command`: our defaults, then the spec's keys."""
        section = getattr(self, command)
        own = _OWN_SFT if command == "sft" else _OWN_DPO
        given = {k: v for k, v in section.model_dump(exclude_unset=True).items() if k not in own}
        import torch

        platform = {} if torch.cuda.is_available() else CPU_DEFAULTS
        return {**TRAINER_DEFAULTS, **platform, "seed": self.seed, **given}

    def fail(self, key: str, message: str) -> SpecError:
        return SpecError(f"{self._path}: {key}: {message}")


def _override(raw: dict[str, Any], item: str, command: Command) -> None:
    """Apply one `--set`; a key that is no top-level field belongs to `command`'s table."""
    key, value = parse_override(item)
    if key.split(".")[0] not in TrainSpec.model_fields:
        key = f"{command}.{key}"
    apply_override(raw, key, value)


def load_spec(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), command: Command = "sft"
) -> TrainSpec:
    """Read, override and validate a train spec; a problem raises SpecError, one line naming file/key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: train spec not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from None
    for item in overrides:
        _override(raw, item, command)
    try:
        spec = TrainSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{path}: {_describe(exc)}") from None
    spec._path = path.resolve()
    return spec


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        model: type[BaseModel] = TrainSpec
        for part in error["loc"][:-1]:
            model = model.model_fields[str(part)].annotation  # type: ignore[assignment]
        known = list(model.model_fields)
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        if close:
            return f"{loc}: unknown key; did you mean {close[0]!r}?"
        return f"{loc}: unknown key" + (f"; known: {', '.join(known)}" if len(known) <= 12 else "")
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{loc}: {error['msg']}{more}"
