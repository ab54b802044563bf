"""`two_stage`: turn 1 names the diseases; turn 2 (the same conversation) asks for the evidence and lets
the model correct a diagnosis the record does not support. Both raw answers are kept in `turns`, the
first diagnosis in `initial_diseases`; `diseases` and `reason` are the final (checked) answer."""

from __future__ import annotations

from typing import Any

from engine.types import Record, WorkItem
from evals.normalize import same_diseases
from generators.base import LLM, register
from generators.medical.common import MedicalConfig, MedicalGenerator
from generators.medical.schema import DISEASES


@register
class TwoStage(MedicalGenerator):
    name = "two_stage"
    Config = MedicalConfig
    task = "diseases"  # turn 1; turn 2 is the format's `check` task

    def fingerprint(self, record: Record) -> Any:
        first = self.fields("diseases")
        return [
            self.key_parts(self.messages(record, "diseases"), first),
            self.format.templates["check.txt"],
            self.format.demo_template("check"),
            self.fields("check"),
        ]

    async def two_turns(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        record, first = item.record, self.fields("diseases")
        turn1 = self.messages(record, "diseases")
        if "turn1" not in item.context:  # a re-sample after a bad turn 2 keeps a good turn 1
            answer, raw = await self.ask(turn1, first, llm, attempt, item.sample)
            item.context["turn1"] = (answer[DISEASES], raw)
        initial, raw1 = item.context["turn1"]
        turn2 = [
            *turn1,
            {"role": "assistant", "content": raw1},
            {"role": "user", "content": self.format.user_text(record, "check", initial)},
        ]
        final, raw2 = await self.ask(turn2, self.fields("check"), llm, attempt, item.sample)
        return {
            **final,
            "initial_diseases": initial,
            "corrected": not same_diseases(initial, final[DISEASES]),
            "turns": [{"turn": "diseases", "answer": raw1}, {"turn": "check", "answer": raw2}],
        }

    async def generate(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        return await self.two_turns(item, llm, attempt)
