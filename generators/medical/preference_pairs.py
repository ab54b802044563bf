"""`preference_pairs`: DPO pairs. The stage's provider (a weaker model) answers each teacher-labelled
record with the `diagnose` prompt; `chosen` is the teacher's answer, `rejected` the weaker one's, and
`agree` says whether both name the same diseases.

Agreeing records are no preference pair. They are dropped by the filter chain, with a reason, through
the generic `format` filter validating `Disagreement` (the stage refuses to load without it), so they
land in `rejected/` instead of being lost:

    [[stages.filters]]
    kind = "format"
    schema = "generators.medical.preference_pairs:Disagreement"
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, field_validator

from engine.types import Record, WorkItem
from evals.normalize import as_items, same_diseases, split_diseases, split_reason
from generators.base import LLM, register
from generators.medical.common import MedicalGenerator
from generators.medical.schema import DISEASES, INPUT, REASON

FILTER_SCHEMA = "generators.medical.preference_pairs:Disagreement"


class Disagreement(BaseModel):
    """The `format` filter's schema for this stage: a pair is kept only when the answers disagree."""

    agree: bool

    @field_validator("agree")
    @classmethod
    def _must_disagree(cls, agree: bool) -> bool:
        if agree:
            raise ValueError("agree: both models name the same diseases, so there is no preference")
        return agree


@register
class PreferencePairs(MedicalGenerator):
    name = "preference_pairs"
    task = "joint"
    required = (INPUT, DISEASES, REASON)

    def __init__(self, config: Any, **kwargs: Any):
        super().__init__(config, **kwargs)
        if not any(
            f.get("kind") == "format" and f.get("schema") == FILTER_SCHEMA for f in self.stage.filters
        ):
            raise ValueError(
                "preference_pairs drops agreeing pairs through a filter: add a [[stages.filters]] table "
                f'with kind = "format" and schema = "{FILTER_SCHEMA}" to this stage'
            )

    async def generate(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        record = item.record
        answer = await super().generate(item, llm, attempt)
        chosen = {  # the teacher's answer, as lists even when the input holds the official strings
            REASON: as_items(record[REASON], split_reason, field=REASON),
            DISEASES: as_items(record[DISEASES], split_diseases, field=DISEASES),
        }
        return {
            "chosen": chosen,
            "rejected": answer,
            "agree": same_diseases(chosen[DISEASES], answer[DISEASES]),
        }
