"""`rewrite_record`: turn outside free text (a question/answer pair, a case report; the `source_fields` of
each input record) into a patient record in the task's `feature_content` format.

The model answers a JSON object of line values (or `name: value` lines); every configured line is
written (empty when the source lacks it), `required` lines must not be empty, and the source text is
kept beside the record as `source_text`, its provenance. The prompt forbids inventing anything the
source does not say; what a model adds anyway is for a later filter or review to catch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from pydantic import Field, model_validator

from engine.errors import BadOutput, SpecError
from engine.types import ChatRequest, Record, WorkItem
from generators.base import LLM, Generator, GeneratorConfig, register
from generators.medical.common import SEED_STRIDE, answer_stats
from generators.medical.parse import parse_record
from generators.medical.prompts import fill, read_prompt
from generators.medical.schema import (
    ENGLISH_KEYS,
    INPUT,
    RECORD_FIELDS,
    JsonMode,
    json_request,
    record_schema,
    render_record,
)

SOURCE_TEXT = "source_text"


class RewriteConfig(GeneratorConfig):
    source_fields: list[str] = Field(
        ["question", "answer"], min_length=1, description="input fields holding the free text, in order"
    )
    fields: list[str] = Field(list(RECORD_FIELDS), min_length=1, description="record lines, in order")
    required: list[str] = Field(["主诉"], description="lines that must not be empty (others may be)")
    json_mode: JsonMode = Field("json_schema", description="json_schema | json_object | guided_json | off")
    system_file: str | None = Field(None, description="system prompt file (default: built-in system.txt)")
    prompt_file: str | None = Field(None, description="user prompt file (default: rewrite_record.txt)")

    @model_validator(mode="after")
    def _consistent(self) -> RewriteConfig:
        unknown = sorted(set(self.required) - set(self.fields))
        if unknown:
            raise ValueError(f"required lines {unknown} are not in fields")
        return self


def source_text(record: Record, fields: list[str]) -> str:
    """The record's free text: one field as it is, several as `field: value` blocks (empty ones skipped)."""
    values = [(f, str(record.get(f) or "").strip()) for f in fields]
    values = [(f, v) for f, v in values if v]
    if len(fields) == 1:
        return values[0][1] if values else ""
    return "\n".join(f"{f}: {v}" for f, v in values)


@register
class RewriteRecord(Generator):
    name = "rewrite_record"
    Config = RewriteConfig

    def __init__(self, config: RewriteConfig, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.config: RewriteConfig = config
        self.system = read_prompt(config.system_file, "system.txt", self.base_dir).strip()
        self.prompt = read_prompt(config.prompt_file, "rewrite_record.txt", self.base_dir)
        schema = record_schema(config.fields, config.required)
        self.params, self.extra_body = json_request(config.json_mode, schema, "patient_record")

    def check(self, record: Record) -> None:
        missing = [f for f in self.config.source_fields if f not in record]
        if missing:
            raise SpecError(
                f"stage {self.stage.name!r} (rewrite_record): input record {record.get('id')!r} has no "
                f"{missing[0]!r} (fields: {', '.join(sorted(record))}); set `source_fields`"
            )

    def messages(self, record: Record) -> list[dict[str, str]]:
        shape = orjson.dumps(dict.fromkeys(self.config.fields, "……")).decode()
        user = fill(
            self.prompt,
            source=source_text(record, self.config.source_fields),
            fields="、".join(self.config.fields),
            format=shape,
        )
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def fingerprint(self, record: Record) -> Any:
        return [self.messages(record), self.stage.params, self.params, self.extra_body]

    async def generate(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        text = source_text(item.record, self.config.source_fields)
        if not text:
            raise BadOutput(f"record {item.record.get('id')!r}: the source fields are all empty")
        params = {**self.stage.params, **self.params}
        if params.get("seed") is not None:
            params["seed"] = params["seed"] + SEED_STRIDE * item.sample + attempt
        completion = await llm(ChatRequest(self.messages(item.record), params, dict(self.extra_body)))
        values = parse_record(completion.text, self.config.fields, self.config.required, ENGLISH_KEYS)
        return {INPUT: render_record(values, self.config.fields), SOURCE_TEXT: text}

    def stats(self, kept: Iterable[Record]) -> dict[str, Any]:
        return answer_stats(kept)
