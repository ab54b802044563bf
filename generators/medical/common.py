"""What the diagnosis generators share: their config keys, building a request (JSON mode, seed bump on a
re-sample), asking for an answer and parsing it, the record check and the answer statistics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydantic import Field

from engine.errors import SpecError
from engine.types import ChatRequest, Record, WorkItem
from generators.base import LLM, Generator, GeneratorConfig
from generators.medical.parse import parse_answer
from generators.medical.prompts import DemoPool, fill, read_prompt, render_demos
from generators.medical.schema import (
    DISEASES,
    INPUT,
    REASON,
    JsonMode,
    answer_schema,
    format_example,
    json_request,
)

SEED_STRIDE = 1000  # sample s, attempt a of a record ask with seed + 1000 * s + a


class MedicalConfig(GeneratorConfig):
    demos: str | None = Field(
        None, description="labelled demo pool (JSONL: feature_content, diseases, reason)"
    )
    k: int = Field(6, ge=0, description="demos per prompt, drawn per record (seed: run seed + record id)")
    json_mode: JsonMode = Field(
        "json_schema",
        description="json_schema | json_object (DeepSeek, DashScope) | guided_json (vLLM) | off",
    )
    reason_first: bool = Field(True, description="ask for `reason` before `diseases` in the JSON answer")
    max_items: int | None = Field(None, ge=1, description="schema limit: most items per list (small models)")
    max_chars: int | None = Field(None, ge=1, description="schema limit: most characters per item")
    system_file: str | None = Field(None, description="system prompt file (default: built-in system.txt)")
    prompt_file: str | None = Field(None, description="user prompt file (default: the generator's own)")
    demo_file: str | None = Field(None, description="template of one demo (default: the generator's own)")


class MedicalGenerator(Generator):
    """A stage that asks for (part of) a diagnosis of one patient record."""

    Config = MedicalConfig
    prompt_name = ""  # built-in user prompt file
    demo_name = ""  # built-in demo template file
    required: tuple[str, ...] = (INPUT,)  # input fields every record needs
    asks: tuple[str, ...] = (REASON, DISEASES)  # the answer fields one request asks for

    def __init__(self, config: MedicalConfig, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.config: MedicalConfig = config
        self.system = read_prompt(config.system_file, "system.txt", self.base_dir).strip()
        self.prompt = read_prompt(config.prompt_file, self.prompt_name, self.base_dir)
        self.demo_template = read_prompt(config.demo_file, self.demo_name, self.base_dir)
        self.pool = DemoPool(self.base_dir / config.demos) if config.demos and config.k else None

    # ---- records and prompts -------------------------------------------------------------------
    def check(self, record: Record) -> None:
        for field in self.required:
            if not record.get(field):
                raise SpecError(
                    f"stage {self.stage.name!r} ({self.name}): input record {record.get('id')!r} has no "
                    f"{field!r} (fields: {', '.join(sorted(record))})"
                )

    def fields(self, *, diseases: bool = True, reason: bool = True) -> list[str]:
        order = [REASON, DISEASES] if self.config.reason_first else [DISEASES, REASON]
        return [f for f in order if (f == REASON and reason) or (f == DISEASES and diseases)]

    def answer_fields(self) -> list[str]:
        """The fields this stage asks for, in the configured order."""
        return self.fields(diseases=DISEASES in self.asks, reason=REASON in self.asks)

    def demos(self, record: Record) -> list[Record]:
        return self.pool.draw(self.config.k, self.seed, record) if self.pool else []

    def user_message(
        self, record: Record, fields: list[str], prompt: str | None = None, demos: str | None = None
    ) -> str:
        """`prompt` (default: the stage's) filled for `record`; `demos` defaults to its demo block."""
        if demos is None:
            demos = render_demos(self.demo_template, self.demos(record), fields)
        diseases = record.get(DISEASES)
        return fill(
            prompt or self.prompt,
            demos=demos,
            format=format_example(fields),
            feature_content=record[INPUT],
            diseases="；".join(diseases) if isinstance(diseases, list) else diseases,
        )

    def messages(self, record: Record, fields: list[str]) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user_message(record, fields)},
        ]

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
        self, messages: list[dict[str, str]], fields: list[str], llm: LLM, attempt: int, sample: int = 0
    ) -> tuple[dict[str, list[str]], str]:
        """(parsed answer, raw text); BadOutput when the answer lacks a field."""
        completion = await llm(self.request(messages, fields, attempt, sample))
        return parse_answer(completion.text, fields), completion.text

    def fingerprint(self, record: Record) -> Any:
        fields = self.answer_fields()
        return self.key_parts(self.messages(record, fields), fields)

    async def generate(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        fields = self.answer_fields()
        answer, _ = await self.ask(self.messages(item.record, fields), fields, llm, attempt, item.sample)
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
