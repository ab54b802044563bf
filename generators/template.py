"""`template`: a generic stage; a prompt template over the input record's fields, one answer field."""

from __future__ import annotations

import string
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from engine.errors import BadOutput, SpecError
from engine.types import ChatRequest, Record, WorkItem
from generators.base import LLM, Generator, GeneratorConfig, register


class TemplateConfig(GeneratorConfig):
    prompt: str | None = Field(None, description="user message; {field} is replaced by the record's field")
    prompt_file: str | None = Field(None, description="read the prompt from this file (relative to the spec)")
    system: str | None = None
    output: str = Field("answer", description="field the answer is written to")
    parse: Literal["text", "json"] = Field("text", description="json: the answer must be a JSON object")

    @model_validator(mode="after")
    def _one_prompt(self) -> TemplateConfig:
        if (self.prompt is None) == (self.prompt_file is None):
            raise ValueError("give exactly one of `prompt` or `prompt_file`")
        return self


def template_fields(template: str) -> set[str]:
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


@register
class TemplateGenerator(Generator):
    name = "template"
    Config = TemplateConfig

    def __init__(self, config: TemplateConfig, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.prompt = config.prompt or (self.base_dir / config.prompt_file).read_text(encoding="utf-8")
        self.fields = template_fields(self.prompt) | template_fields(config.system or "")

    def check(self, record: Record) -> None:
        missing = sorted(self.fields - record.keys())
        if missing:
            raise SpecError(
                f"stage {self.stage.name!r}: the prompt uses {{{missing[0]}}} but input record "
                f"{record.get('id')!r} has no field {missing[0]!r} (fields: {', '.join(sorted(record))})"
            )

    def messages(self, record: Record) -> list[dict[str, str]]:
        messages = [{"role": "user", "content": self.prompt.format(**record)}]
        if self.config.system:
            messages.insert(0, {"role": "system", "content": self.config.system.format(**record)})
        return messages

    def fingerprint(self, record: Record) -> Any:
        return [self.messages(record), self.config.parse]

    async def generate(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        params = dict(self.stage.params)
        if attempt and params.get("seed") is not None:
            params["seed"] = params["seed"] + attempt  # a re-sample must not repeat the same answer
        completion = await llm(ChatRequest(self.messages(item.record), params))
        if self.config.parse == "text":
            return {self.config.output: completion.text}
        try:
            value = orjson.loads(completion.text)
        except orjson.JSONDecodeError as exc:
            raise BadOutput(f"answer is not valid JSON: {exc}", raw=completion.text) from None
        if not isinstance(value, dict):
            raise BadOutput("answer is JSON but not an object", raw=completion.text)
        return {self.config.output: value}
