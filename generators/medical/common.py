"""What the diagnosis generators share: their config keys (the task's prompt format plus how JSON is
asked for), building a request (JSON mode, seed bump on a re-sample), asking for an answer and parsing
it, the record check and the answer statistics. Prompts come from generators/medical/format.py, the
module the trainers render their examples with."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydantic import Field

from engine.errors import SpecError
from engine.types import ChatRequest, Record, WorkItem
from generators.base import LLM, Generator, GeneratorConfig
from generators.medical.format import FormatSpec, PromptFormat, Task
from generators.medical.parse import parse_answer
from generators.medical.schema import DISEASES, INPUT, REASON, JsonMode, answer_schema, json_request

SEED_STRIDE = 1000  # sample s, attempt a of a record ask with seed + 1000 * s + a


class MedicalConfig(GeneratorConfig, FormatSpec):
    k: int = Field(6, ge=0, description="demos per prompt (0: zero-shot; needs `demos`)")
    json_mode: JsonMode = Field(
        "json_schema",
        description="json_schema | json_object (DeepSeek, DashScope) | guided_json (vLLM) | off",
    )
    max_items: int | None = Field(None, ge=1, description="schema limit: most items per list (small models)")
    max_chars: int | None = Field(None, ge=1, description="schema limit: most characters per item")


class MedicalGenerator(Generator):
    """A stage that asks for (part of) a diagnosis of one patient record."""

    Config = MedicalConfig
    task: Task = "joint"  # the format's task one request asks
    required: tuple[str, ...] = (INPUT,)  # input fields every record needs

    def __init__(self, config: MedicalConfig, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.config: MedicalConfig = config
        self.format: PromptFormat = self.load_format()

    def load_format(self) -> PromptFormat:
        """The prompt format from the stage's keys (demo choice seeded by the run seed)."""
        return self.config.resolve(self.base_dir, self.seed)

    # ---- records and prompts -------------------------------------------------------------------
    def check(self, record: Record) -> None:
        for field in self.required:
            if not record.get(field):
                raise SpecError(
                    f"stage {self.stage.name!r} ({self.name}): input record {record.get('id')!r} has no "
                    f"{field!r} (fields: {', '.join(sorted(record))})"
                )

    def fields(self, task: Task | None = None) -> list[str]:
        """The answer keys `task` (default: the stage's) asks for, in the configured order."""
        return self.format.fields(task or self.task)

    def messages(
        self, record: Record, task: Task | None = None, diseases: Any = None
    ) -> list[dict[str, str]]:
        return self.format.messages(record, task or self.task, diseases)

    # ---- requests ------------------------------------------------------------------------------
    def json_params(self, fields: list[str], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        schema = answer_schema(fields, max_items=self.config.max_items, max_chars=self.config.max_chars)
        return json_request(self.config.json_mode, schema, name)

    def request(
        self, messages: list[dict[str, str]], fields: list[str], attempt: int, sample: int = 0
    ) -> ChatRequest:
        params, extra = self.json_params(fields, "_".join(fields))
        params = {**self.stage.params, **params}
        if params.get("seed") is not None:
            # neither a re-sample nor another sample of the same record may repeat the same answer
            params["seed"] = params["seed"] + SEED_STRIDE * sample + attempt
        return ChatRequest(messages, params, extra)

    def key_parts(self, messages: list[dict[str, str]], fields: list[str]) -> list[Any]:
        """What a work key must see besides id and sample: messages, sampling params, JSON mode."""
        return [messages, self.stage.params, self.json_params(fields, "_".join(fields))]

    async def ask(
        self,
        messages: list[dict[str, str]],
        fields: list[str],
        llm: LLM,
        attempt: int,
        sample: int = 0,
        provider: str | None = None,
    ) -> tuple[dict[str, list[str]], str]:
        """(parsed answer, raw text) from the stage's provider, or the named one; BadOutput when the
        answer lacks a field."""
        request = self.request(messages, fields, attempt, sample)
        completion = await (llm(request, provider=provider) if provider else llm(request))
        return parse_answer(completion.text, fields), completion.text

    def fingerprint(self, record: Record) -> Any:
        fields = self.fields()
        return self.key_parts(self.messages(record), fields)

    async def generate(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        fields = self.fields()
        answer, _ = await self.ask(self.messages(item.record), fields, llm, attempt, item.sample)
        return answer

    def stats(self, kept: Iterable[Record]) -> dict[str, Any]:
        return answer_stats(kept)


def answer_stats(kept: Iterable[Record]) -> dict[str, Any]:
    """The figures the first user tracked per version: records, mean reasons per answer, mean reason
    characters (the points' own text, without numbering), mean diseases, mean record characters.
    One pass over `kept` (the pipeline streams the stage's kept files)."""
    records, sums, counts = 0, Counter(), Counter()
    for record in kept:
        records += 1
        if isinstance(record.get(REASON), list):
            counts[REASON] += 1
            sums["mean_reasons"] += len(record[REASON])
            sums["mean_reason_chars"] += sum(len(p) for p in record[REASON])
        if isinstance(record.get(DISEASES), list):
            counts[DISEASES] += 1
            sums["mean_diseases"] += len(record[DISEASES])
        if isinstance(record.get(INPUT), str):
            counts[INPUT] += 1
            sums["mean_record_chars"] += len(record[INPUT])
    stats: dict[str, Any] = {"records": records}
    over = {"mean_reasons": REASON, "mean_reason_chars": REASON, "mean_diseases": DISEASES}
    for name in ("mean_reasons", "mean_reason_chars", "mean_diseases", "mean_record_chars"):
        n = counts[over.get(name, INPUT)]
        if n:
            stats[name] = round(sums[name] / n, 2)
    return stats
