"""`self_instruct`: new, diverse patient records in the `feature_content` format, Self-Instruct style.

Generation runs in rounds. Each prompt shows `demos` examples: `generated_demos` of them drawn from the
records accepted so far (when there are any), the rest from the seed pool, with an RNG seeded by the run
seed, the round and the item. The pipeline commits a round through the filter chain (a `rouge_dedupe`
filter seeded with the same pool drops near-duplicates) and calls accept(); only then is the next
round's work built, so later prompts see earlier accepted records and a resume replays nothing.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field, model_validator

from engine.errors import SpecError
from engine.jsonl import numbered_jsonl
from engine.types import ChatRequest, Record, WorkItem
from generators.base import LLM, Generator, GeneratorConfig, register
from generators.medical.common import SEED_STRIDE, answer_stats
from generators.medical.parse import parse_record
from generators.medical.prompts import fill, read_prompt
from generators.medical.schema import (
    ENGLISH_KEYS,
    INPUT,
    RECORD_FIELDS,
    REQUIRED_RECORD_FIELDS,
    JsonMode,
    json_request,
    record_schema,
    render_record,
)


class SelfInstructConfig(GeneratorConfig):
    pool: list[str] = Field(min_length=1, description="seed pool JSONL files (records with feature_content)")
    rounds: int = Field(1, ge=1, description="rounds; each sees the records accepted in the earlier ones")
    per_round: int = Field(8, ge=1, description="records asked for per round")
    demos: int = Field(6, ge=1, description="examples per prompt")
    generated_demos: int = Field(
        2, ge=0, description="of which drawn from accepted records, once there are any"
    )
    fields: list[str] = Field(list(RECORD_FIELDS), min_length=1, description="record lines, in order")
    required: list[str] = Field(list(REQUIRED_RECORD_FIELDS), description="lines that must not be empty")
    json_mode: JsonMode = Field("json_schema", description="json_schema | json_object | guided_json | off")
    max_chars: int | None = Field(None, ge=1, description="schema limit: most characters per line")
    id_prefix: str = Field("si", description="ids are <prefix>-r<round>-<item>")
    system_file: str | None = None
    prompt_file: str | None = Field(None, description="default: built-in self_instruct.txt")
    demo_file: str | None = Field(None, description="default: built-in demo_record.txt")

    @model_validator(mode="after")
    def _consistent(self) -> SelfInstructConfig:
        if self.generated_demos > self.demos:
            raise ValueError("generated_demos cannot exceed demos")
        unknown = sorted(set(self.required) - set(self.fields))
        if unknown:
            raise ValueError(f"required lines {unknown} are not in fields")
        return self


def read_pool(paths: list[Path]) -> list[Record]:
    pool = []
    for path in paths:
        for number, record in numbered_jsonl(path):
            if not isinstance(record.get(INPUT), str):
                raise SpecError(f"{path}:{number}: pool record needs a {INPUT!r} text")
            pool.append({"id": record.get("id", f"{path.name}:{number}"), INPUT: record[INPUT]})
    if not pool:
        raise SpecError(f"self-instruct pool {', '.join(map(str, paths))} holds no records")
    return pool


@register
class SelfInstruct(Generator):
    name = "self_instruct"
    Config = SelfInstructConfig
    needs_input = False
    shardable = False  # every round needs all of the previous round's accepted records

    def __init__(self, config: SelfInstructConfig, **kwargs: Any):
        super().__init__(config, **kwargs)
        self.config: SelfInstructConfig = config
        if self.stage.input is not None:
            raise ValueError("self_instruct reads its seed records from `pool`, not `input`")
        if self.stage.samples != 1:
            raise ValueError("self_instruct: set `per_round` instead of `samples`")
        self.pool = read_pool([self.base_dir / p for p in config.pool])
        self.system = read_prompt(config.system_file, "system.txt", self.base_dir).strip()
        self.prompt = read_prompt(config.prompt_file, "self_instruct.txt", self.base_dir)
        self.demo_template = read_prompt(config.demo_file, "demo_record.txt", self.base_dir)
        schema = record_schema(config.fields, config.required, config.max_chars)
        self.params, self.extra_body = json_request(config.json_mode, schema, "patient_record")
        self.accepted: list[Record] = []

    def rounds(self, records: Iterable[Record]) -> Iterator[list[WorkItem]]:
        self.accepted = []
        for round_no in range(self.config.rounds):
            # built only when the pipeline asks for it, i.e. after accept() of the previous round
            yield [self._item(round_no, i) for i in range(self.config.per_round)]

    def accept(self, kept: list[Record]) -> None:
        self.accepted.extend({"id": r["id"], INPUT: r[INPUT]} for r in kept)

    def total(self, inputs: int | None) -> int:
        return self.config.rounds * self.config.per_round

    def _item(self, round_no: int, index: int) -> WorkItem:
        cfg = self.config
        rng = random.Random(f"{self.seed}:self_instruct:{round_no}:{index}")
        n_generated = min(cfg.generated_demos, len(self.accepted))
        n_pool = min(cfg.demos - n_generated, len(self.pool))
        demos = rng.sample(self.pool, n_pool) + rng.sample(self.accepted, n_generated)
        block = "".join(
            fill(self.demo_template, n=n, feature_content=d[INPUT]) for n, d in enumerate(demos, 1)
        )
        shape = orjson.dumps(dict.fromkeys(cfg.fields, "……")).decode()
        user = fill(self.prompt, demos=block, k=len(demos), format=shape, fields="、".join(cfg.fields))
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": user}]
        rid = f"{cfg.id_prefix}-r{round_no:03d}-{index:04d}"
        seed_offset = SEED_STRIDE * (round_no * cfg.per_round + index)
        return WorkItem(
            record={"id": rid},
            fingerprint=[messages, self.stage.params, self.params, self.extra_body],
            # items differ by seed too: two prompts that drew the same demos must not get the same record
            context={"messages": messages, "demo_ids": [d["id"] for d in demos], "seed_offset": seed_offset},
        )

    async def generate(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        params = {**self.stage.params, **self.params}
        if params.get("seed") is not None:
            params["seed"] = params["seed"] + item.context["seed_offset"] + attempt
        completion = await llm(ChatRequest(item.context["messages"], params, dict(self.extra_body)))
        values = parse_record(completion.text, self.config.fields, self.config.required, ENGLISH_KEYS)
        return {INPUT: render_record(values, self.config.fields), "demo_ids": item.context["demo_ids"]}

    def stats(self, kept: Iterable[Record]) -> dict[str, Any]:
        return answer_stats(kept)
