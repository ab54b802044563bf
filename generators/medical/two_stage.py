"""`two_stage`: turn 1 names the diseases; turn 2 (the same conversation) asks for the evidence and lets
the model correct a diagnosis the record does not support. Both raw answers are kept in `turns`, the
first diagnosis in `initial_diseases`; `diseases` and `reason` are the final (checked) answer."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from engine.types import Record, WorkItem
from evals.normalize import normalize_disease
from generators.base import LLM, register
from generators.medical.common import MedicalConfig, MedicalGenerator
from generators.medical.prompts import read_prompt, render_demos
from generators.medical.schema import DISEASES, REASON


class TwoStageConfig(MedicalConfig):
    check_file: str | None = Field(
        None, description="turn-2 prompt file (default: built-in two_stage_check.txt)"
    )
    check_demo_file: str | None = Field(
        None, description="turn-2 demo template (default: built-in demo_check.txt)"
    )


def same_diseases(a: list[str], b: list[str]) -> bool:
    """Equal as sets of normalised names (numbering, width, qualifiers and order do not count)."""
    return {normalize_disease(x) for x in a} == {normalize_disease(x) for x in b}


@register
class TwoStage(MedicalGenerator):
    name = "two_stage"
    Config = TwoStageConfig
    prompt_name = "diseases.txt"
    demo_name = "demo.txt"

    def __init__(self, config: TwoStageConfig, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.check_prompt = read_prompt(config.check_file, "two_stage_check.txt", self.base_dir)
        self.check_demo = read_prompt(config.check_demo_file, "demo_check.txt", self.base_dir)

    def fingerprint(self, record: Record) -> Any:
        first = self.fields(reason=False)
        return [
            self.key_parts(self.messages(record, first), first),
            self.check_prompt,
            self.check_demo,
            self.fields(),
        ]

    def check_message(self, record: Record, diseases: list[str]) -> str:
        fields = self.fields()
        demos = render_demos(self.check_demo, self.demos(record), [REASON])
        return self.user_message({**record, DISEASES: diseases}, fields, self.check_prompt, demos=demos)

    async def two_turns(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        record, first = item.record, self.fields(reason=False)
        turn1 = self.messages(record, first)
        if "turn1" not in item.context:  # a re-sample after a bad turn 2 keeps a good turn 1
            answer, raw = await self.ask(turn1, first, llm, attempt, item.sample)
            item.context["turn1"] = (answer[DISEASES], raw)
        initial, raw1 = item.context["turn1"]
        turn2 = [
            *turn1,
            {"role": "assistant", "content": raw1},
            {"role": "user", "content": self.check_message(record, initial)},
        ]
        final, raw2 = await self.ask(turn2, self.fields(), llm, attempt, item.sample)
        return {
            **final,
            "initial_diseases": initial,
            "corrected": not same_diseases(initial, final[DISEASES]),
            "turns": [{"turn": "diseases", "answer": raw1}, {"turn": "check", "answer": raw2}],
        }

    async def generate(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        return await self.two_turns(item, llm, attempt)
