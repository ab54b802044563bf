"""The generator contract: turn input records into work items, and a work item into output fields.

A generator is a stage type. The pipeline calls `rounds()` to get work (one round for most
generators; self-instruct uses several so later prompts see earlier accepted records), runs
`generate()` for each item through `llm` (a provider behind the limiter and retries), and calls
`accept()` with each round's kept records. `generate()` raises BadOutput for an unusable answer;
the pipeline re-samples within the stage's budget, then records the item as rejected. A generator with
a side output (the top-k capture's store) opens it in `open_outputs()` and closes it in `close_outputs()`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from engine.providers.base import Api
from engine.types import Completion, Record, WorkItem

# `llm(request)` asks the stage's provider; `llm(request, provider=NAME)` another declared provider (one
# the generator checked in `check_providers`), e.g. the second model of a two-model prediction.
LLM = Callable[..., Awaitable[Completion]]


class GeneratorConfig(BaseModel):
    """Generator-specific keys of a `[[stages]]` table; each generator subclasses it."""

    model_config = ConfigDict(extra="forbid")


class Generator:
    name: ClassVar[str] = ""
    Config: ClassVar[type[GeneratorConfig]] = GeneratorConfig
    needs_input: ClassVar[bool] = True
    needs_provider: ClassVar[bool] = True
    shardable: ClassVar[bool] = True  # False for feedback generators whose rounds need every answer

    def __init__(self, config: GeneratorConfig, *, stage: Any, base_dir: Path, seed: int = 0):
        self.config = config
        self.stage = stage  # engine.spec.StageSpec: name, samples, params, ...
        self.base_dir = base_dir  # the spec file's folder: relative paths are read from here
        self.seed = seed  # the run's `[run] seed`: generators that sample (demos, self-instruct) use it

    def check(self, record: Record) -> None:
        """Raise SpecError when the first input record lacks a field this generator needs."""

    def check_providers(self, providers: dict[str, Any]) -> None:
        """Called once the spec is loaded, with every declared provider's validated config: a generator
        that calls further providers checks their names here (ValueError refuses the spec)."""

    def extra_providers(self) -> list[str]:
        """The declared providers this stage asks besides its own (`llm(request, provider=NAME)`): the run
        builds and preflights their clients with the stage's own, before the first request."""
        return []

    def api(self, provider: str) -> Api:
        """What this stage sends `provider` (its own or an extra one): chat messages, or token ids to the
        completions API. The run's preflight asks the same API."""
        return "chat"

    def work(self, record: Record) -> Iterable[WorkItem]:
        """Work items for one input record (default: `stage.samples` samples of it)."""
        for sample in range(self.stage.samples):
            yield WorkItem(record=record, sample=sample, fingerprint=self.fingerprint(record))

    def fingerprint(self, record: Record) -> Any:
        """Everything besides id/sample that changes the answer; part of the work key."""
        return None

    def rounds(self, records: Iterable[Record]) -> Iterator[Iterable[WorkItem]]:
        """Default: one round over every input record, streamed."""
        yield (item for record in records for item in self.work(record))

    def open_outputs(self, stage_dir: Path, shard: int, settings: Any) -> None:
        """Before `engine run` works on this stage (never in status or replay): open the stage's own side
        outputs next to its journal, one per shard (`shard` is this process's --shard index). `settings`
        are the stage's answer settings (engine/keys.py, part of every work key): what an output holds
        from other settings is other work, not to be reused."""

    def close_outputs(self) -> None:
        """After the stage ran, also after an error or a stop; must not fail when nothing was opened."""

    def accept(self, kept: list[Record]) -> None:
        """Called after each round with the records the filter chain kept, in commit order."""

    def total(self, inputs: int | None) -> int | None:
        """Work items for `inputs` input records (None: no input), for the progress total; None: unknown."""
        return None if inputs is None else inputs * self.stage.samples

    def output_id(self, item: WorkItem) -> Any:
        """The id of the record an item produces (unique within the stage; the input's own id, of the
        same type, when there is one answer per record, so exports keep `3104` a number)."""
        rid = item.record["id"]
        return rid if self.stage.samples == 1 else f"{rid}-s{item.sample}"

    def stats(self, kept: Iterable[Record]) -> dict[str, Any]:
        """Task figures over a stage's kept records (streamed once), for `engine status` and the manifest."""
        return {}

    async def generate(self, item: WorkItem, llm: LLM, attempt: int) -> Record:
        """Return the output fields for one work item (merged over the input record)."""
        raise NotImplementedError


REGISTRY: dict[str, type[Generator]] = {}


def register(cls: type[Generator]) -> type[Generator]:
    REGISTRY[cls.name] = cls
    return cls
