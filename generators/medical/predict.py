"""`predict`: answers for a test set from any provider (a teacher, or a fine-tuned student through the
`local` provider or a vLLM endpoint), in one request (`mode = "joint"`) or two turns (`"two_stage"`),
zero- or few-shot. With `keep_unparsed` every input id keeps a record, so a submission never lacks one."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from engine.errors import BadOutput
from engine.types import Record, WorkItem
from generators.base import LLM, register
from generators.medical.common import MedicalGenerator
from generators.medical.schema import DISEASES, REASON
from generators.medical.two_stage import TwoStage, TwoStageConfig


class PredictConfig(TwoStageConfig):
    mode: Literal["joint", "two_stage"] = Field("joint", description="one request, or diseases then evidence")
    k: int = Field(0, ge=0, description="demos per prompt (0: zero-shot; needs `demos`)")
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
        self.prompt_name = "diagnose.txt" if config.mode == "joint" else "diseases.txt"
        super().__init__(config, **kwargs)
        self.config: PredictConfig = config

    def fingerprint(self, record: Record) -> Any:
        if self.config.mode == "two_stage":
            return super().fingerprint(record)
        return MedicalGenerator.fingerprint(self, record)  # joint: diagnose's request

    async def generate(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        try:
            if self.config.mode == "two_stage":
                return await self.two_turns(item, llm, attempt)
            return await MedicalGenerator.generate(self, item, llm, attempt)
        except BadOutput as exc:
            if not self.config.keep_unparsed or attempt + 1 < self.stage.max_bad_output:
                raise
            diseases = item.context["turn1"][0] if "turn1" in item.context else []
            return {DISEASES: diseases, REASON: [], "parse_error": str(exc), "raw_text": exc.raw}
