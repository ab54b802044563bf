"""The manifest of a run (or of one shard of it): what ran, with which spec and versions, its status,
per stage counts, and the spend of the whole run from the ledger."""

from __future__ import annotations

import time
from typing import Any

import orjson

from engine.spec import LoadedSpec
from engine.spend import Ledger
from engine.store import manifest_path


def build_manifest(
    loaded: LoadedSpec,
    shard: tuple[int, int],
    reports: dict[str, dict[str, Any]],
    ledger: Ledger,
    stop_reason: str,
    started: float,
) -> dict[str, Any]:
    from engine import versions

    spec = loaded.spec
    previous = {}
    path = manifest_path(loaded.out_dir, shard)
    if path.exists():
        previous = orjson.loads(path.read_bytes())
    stages = {**previous.get("stages", {}), **reports}
    ledger.refresh()
    usage = ledger.usage()
    providers = {
        name: {**usage.get(name, {}), "kind": config.kind, "model": config.model}
        for name, config in loaded.provider_configs.items()
    }
    pending = sum(s["counts"]["pending"] for s in stages.values())
    failed = sum(s["counts"]["failed"] for s in stages.values())
    ended = f"finished, {failed} failed" if failed else "complete"  # never "complete" with failures
    return {
        "name": spec.run.name,
        "description": spec.run.description,
        "spec": str(loaded.path),
        "spec_hash": loaded.hash,
        "overrides": list(loaded.overrides),  # `engine run --set` items (engine/named_runs.py)
        "created": previous.get("created", _iso(started)),
        "updated": _iso(time.time()),
        "shard": list(shard),
        "status": stop_reason or ("incomplete" if pending else ended),
        "versions": versions(),
        "providers": providers,
        "stages": stages,
    }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
