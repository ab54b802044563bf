"""`predict`: answers for a test set from any provider (a teacher, or a fine-tuned student through the
`local` provider or a vLLM endpoint), in one request (`mode = "joint"`), two turns of one conversation
(`"two_stage"`), or two models (`"split"`: a diseases model, then a reasons model given those diseases,
as `engine train sft` trains them in split mode). Zero- or few-shot.

`format_from = "<train output dir>"` asks in the prompt format saved there by training (texts, demos and
how they are chosen, answer order), so a student sees at prediction time exactly what it saw in training.
With `keep_unparsed` every input id keeps a record, so a submission never lacks one."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from engine.errors import BadOutput
from engine.types import Record, WorkItem
from generators.base import LLM, register
from generators.medical.common import MedicalConfig, MedicalGenerator
from generators.medical.format import (
    SPLIT,
    FormatSpec,
    PromptFormat,
    apply_overrides,
    find_format,
    load_format,
)
from generators.medical.schema import DISEASES, REASON
from generators.medical.two_stage import TwoStage

log = logging.getLogger(__name__)
Mode = Literal["joint", "two_stage", "split"]
# The tasks of the format each mode asks; a student trained on others is warned about.
MODE_TASKS: dict[str, tuple[str, ...]] = {
    "joint": ("joint",),
    "two_stage": ("diseases", "check"),
    "split": SPLIT,
}


class PredictConfig(MedicalConfig):
    mode: Mode | None = Field(
        None,
        description="joint | two_stage | split (default: split for a split-trained format_from, else joint)",
    )
    k: int = Field(0, ge=0, description="demos per prompt (0: zero-shot; needs `demos`)")
    format_from: str = Field(
        "", description="a train output dir: ask in the prompt format saved there (prompt_format.json)"
    )
    reasons_provider: str = Field("", description="split mode: the provider of the reasons model")
    keep_unparsed: bool = Field(
        True,
        description="after the last bad answer keep the record with empty fields, `parse_error` and "
        "`raw_text` (turn 1's diseases when only turn 2 failed) instead of rejecting it",
    )


@register
class Predict(TwoStage):
    name = "predict"
    Config = PredictConfig

    def __init__(self, config: PredictConfig, **kwargs: Any):
        self.trained: tuple[str, ...] = ()  # the tasks the format_from student was trained on
        super().__init__(config, **kwargs)
        self.config: PredictConfig = config
        self.mode: Mode = config.mode or ("split" if self.trained == SPLIT else "joint")
        self.task = "joint" if self.mode == "joint" else "diseases"
        if self.mode == "split" and not config.reasons_provider:
            raise ValueError('mode = "split" needs `reasons_provider`: the provider of the reasons model')
        if config.reasons_provider and self.mode != "split":
            raise ValueError(f'reasons_provider is for mode = "split" (mode is {self.mode!r})')
        unseen = [t for t in MODE_TASKS[self.mode] if self.trained and t not in self.trained]
        if unseen:
            log.warning(
                "stage %r: mode %r asks %s prompts, but the student of %s was trained on %s only",
                self.stage.name, self.mode, "/".join(unseen), config.format_from, "/".join(self.trained),
            )  # fmt: skip

    def load_format(self) -> PromptFormat:
        config: PredictConfig = self.config  # type: ignore[assignment]
        if not config.format_from:
            return super().load_format()
        saved = load_format(self.base_dir / config.format_from)
        self.trained = saved.tasks
        keys = config.model_fields_set & set(FormatSpec.model_fields)
        fmt = apply_overrides(saved.format, config, keys, self.base_dir)
        if changes := fmt.changes(saved.format):
            log.warning(
                "stage %r: asks in the training format of %s, with changes: %s",
                self.stage.name, saved.path, "; ".join(changes),
            )  # fmt: skip
        return fmt

    def check_providers(self, providers: dict[str, Any]) -> None:
        name = self.config.reasons_provider
        if name and name not in providers:
            known = ", ".join(providers)
            raise ValueError(f"reasons_provider {name!r} is not a declared provider (known: {known})")
        if self.config.format_from:
            return
        for used in filter(None, (self.stage.provider, name)):
            folder = student_folder(providers[used])
            if folder is not None:
                found = find_format(folder)
                # format_from is read from the spec's folder, whatever the working directory
                where = os.path.relpath(found.parent.resolve(), self.base_dir.resolve()) if found else ""
                fix = f'format_from = "{where}"' if found else "format_from = <its train output dir>"
                log.warning(
                    "stage %r: provider %r is a fine-tuned student (%s) but the stage sets no format_from, "
                    "so it is asked in this stage's own prompt format, not necessarily the one it was "
                    "trained on; add %s",
                    self.stage.name, used, folder, fix,
                )  # fmt: skip

    def extra_providers(self) -> list[str]:
        return [self.config.reasons_provider] if self.config.reasons_provider else []

    def fingerprint(self, record: Record) -> Any:
        if self.mode == "two_stage":
            return super().fingerprint(record)
        if self.mode == "split":
            return [
                self.key_parts(self.messages(record, "diseases"), self.fields("diseases")),
                self.format.templates["reasons.txt"],
                self.format.demo_template("reasons"),
                self.fields("reasons"),
                self.config.reasons_provider,
            ]
        return MedicalGenerator.fingerprint(self, record)  # joint: diagnose's request

    async def two_models(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        """The diseases model names the diseases; the reasons model, given them, writes the evidence."""
        record = item.record
        if "turn1" not in item.context:  # a re-sample after a bad reasons answer keeps good diseases
            answer, raw = await self.ask(
                self.messages(record, "diseases"), self.fields("diseases"), llm, attempt, item.sample
            )
            item.context["turn1"] = (answer[DISEASES], raw)
        diseases, raw1 = item.context["turn1"]
        messages = self.messages(record, "reasons", diseases)
        provider = self.config.reasons_provider
        answer, raw2 = await self.ask(messages, self.fields("reasons"), llm, attempt, item.sample, provider)
        turns = [{"turn": "diseases", "answer": raw1}, {"turn": "reasons", "answer": raw2}]
        return {REASON: answer[REASON], DISEASES: diseases, "turns": turns}

    async def generate(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        try:
            if self.mode == "two_stage":
                return await self.two_turns(item, llm, attempt)
            if self.mode == "split":
                return await self.two_models(item, llm, attempt)
            return await MedicalGenerator.generate(self, item, llm, attempt)
        except BadOutput as exc:
            if not self.config.keep_unparsed or attempt + 1 < self.stage.max_bad_output:
                raise
            diseases = item.context["turn1"][0] if "turn1" in item.context else []
            return {DISEASES: diseases, REASON: [], "parse_error": str(exc), "raw_text": exc.raw}


def student_folder(provider: Any) -> Path | None:
    """The folder of a fine-tuned student a provider runs, else None. A student-style provider is a
    `local` provider with an `adapter`, or whose `model` folder holds a saved prompt format (a merged
    student). What a vLLM endpoint serves cannot be seen from here: give its stage `format_from`."""
    if getattr(provider, "kind", None) != "local":
        return None
    if provider.adapter:
        return Path(provider.adapter).expanduser()
    model = Path(provider.model).expanduser() if provider.model else None
    return model if model is not None and find_format(model) is not None else None
