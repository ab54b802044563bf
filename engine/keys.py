"""Work keys: what makes two work items the same work. A key hashes the stage, the record id, the sample,
the round, the generator's fingerprint of the item and the stage's answer settings; `--shard I/N` splits
keys by hash.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from engine.errors import SpecError
from engine.spec import LoadedSpec, StageSpec
from engine.types import WorkItem


def work_key(stage: str, item: WorkItem, round_no: int, settings: Any = None) -> str:
    """`settings`: what changes every answer of the stage besides the item (see `answer_settings`)."""
    payload = [stage, str(item.record["id"]), item.sample, round_no, item.fingerprint, settings]
    try:
        blob = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise SpecError(f"stage {stage!r}: the generator's fingerprint cannot be hashed ({exc})") from None
    return hashlib.sha256(blob).hexdigest()[:24]


def answer_settings(loaded: LoadedSpec, stage: StageSpec) -> list[Any]:
    """What changes every answer of a stage besides the item itself: the stage's sampling params, the
    generator's settings and the provider's (its Config's `answer_fields`). Filters, rates, concurrency,
    timeouts and prices are not here: changing them is never new work."""
    gen = loaded.generators[stage.name]
    provider = loaded.provider_configs.get(stage.provider or "")
    return [
        stage.params,
        gen.config.model_dump(mode="json"),
        provider.answer_settings() if provider else None,
    ]


def key_shard(key: str, shards: int) -> int:
    return int(key[:8], 16) % shards
