"""Runs a spec's stages in order: work items -> provider (limiter, retries) -> journal -> filter chain.

The same loop serves three modes: `run` (request what has no outcome yet), `replay` (no requests;
rebuild kept/rejected/failed from the journal with the current filters) and `status` (no requests,
no writes; count). Commit order is deterministic: round, then input order, then sample.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import signal
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import orjson

from engine.commit import Committer, RoundCommit, StageReport
from engine.errors import BadOutput, Fatal, ProviderError, RunStopped, SpecError
from engine.progress import StageProgress
from engine.spec import LoadedSpec, StageSpec
from engine.store import (
    DerivedWriter,
    Journal,
    manifest_path,
    read_jsonl,
    read_outcome,
    shard_name,
    write_json_atomic,
)
from engine.taskpool import TaskPool
from engine.types import ChatRequest, Completion, Record, WorkItem
from filters.base import Filter, build_filter
from generators.base import Generator

Mode = Literal["run", "replay", "status"]


def work_key(stage: str, item: WorkItem, round_no: int) -> str:
    payload = [stage, str(item.record["id"]), item.sample, round_no, item.fingerprint]
    try:
        blob = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError as exc:
        raise SpecError(f"stage {stage!r}: the generator's fingerprint cannot be hashed ({exc})") from None
    return hashlib.sha256(blob).hexdigest()[:24]


def key_shard(key: str, shards: int) -> int:
    return int(key[:8], 16) % shards


class Pipeline:
    def __init__(
        self,
        loaded: LoadedSpec,
        *,
        mode: Mode = "run",
        shard: tuple[int, int] = (0, 1),
        stages: list[str] | None = None,
        retry_failed: bool = False,
        progress: bool = True,
    ):
        self.loaded = loaded
        self.mode = mode
        self.shard = shard
        self.only = set(stages or [])
        self.retry_failed = retry_failed
        self.progress = StageProgress(enabled=progress and mode == "run")
        self.clients: dict[str, Any] = {}
        self.stopping = asyncio.Event()
        self.stop_reason = ""
        self.reports: dict[str, StageReport] = {}
        self.started = time.time()

    # ---- the run -------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        if self.shard[1] > 1:
            for stage in self.loaded.spec.stages:
                if not self.loaded.generators[stage.name].shardable:
                    raise SpecError(f"stage {stage.name!r} ({stage.generator}) cannot be split with --shard")
        loop = asyncio.get_running_loop()
        if self.mode == "run":
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.stop, f"stopped by {signal.Signals(sig).name}")
        try:
            for stage in self.loaded.spec.stages:
                if self.only and stage.name not in self.only:
                    continue
                if self.stopping.is_set():
                    self.reports[stage.name] = StageReport(stage.name)
                    continue
                self.reports[stage.name] = await self._stage(stage)
        finally:
            if self.mode == "run":
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            for client in self.clients.values():
                await client.aclose()
            self.progress.stop()
        manifest = self.manifest()
        if self.mode != "status":
            write_json_atomic(manifest_path(self.loaded.out_dir, self.shard), manifest)
        return manifest

    def stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            self.stop_reason = reason
            self.progress.log(f"[yellow]{reason}: finishing requests in flight, then stopping")
        self.stopping.set()

    async def _stage(self, stage: StageSpec) -> StageReport:
        gen = self.loaded.generators[stage.name]
        report = StageReport(stage.name)
        started = time.monotonic()
        stage_dir = self.loaded.out_dir / stage.name
        journal = Journal(stage_dir, self.shard[0], readonly=self.mode != "run")
        if journal.torn_bytes:
            self.progress.log(f"{journal.path}: dropped a torn last line ({journal.torn_bytes} bytes)")
        chain = self._chain(stage)
        writer = DerivedWriter(stage_dir, self.shard[0]) if self.mode == "run" else None
        if self.mode == "replay":
            writer = DerivedWriter(stage_dir, 0, replace_all=True)
        feedback = type(gen).accept is not Generator.accept  # keep a round's records only if asked
        self.progress.start(stage.name, self._expected(stage))
        try:
            inputs = self._checked(gen, self._inputs(stage))
            for round_no, items in enumerate(gen.rounds(inputs)):
                commit = RoundCommit(journal, Committer(chain, writer, report), keep_records=feedback)
                async with TaskPool(self._in_flight(stage)) as pool:
                    for item in items:
                        key = work_key(stage.name, item, round_no)
                        if not self._mine(stage, key):
                            continue
                        commit.order.append(key)
                        redo = self.retry_failed and key in journal and journal.get(key)["status"] == "failed"
                        if key in journal and not redo:
                            self._advance(commit)
                            continue
                        if self.mode != "run" or self.stopping.is_set():
                            continue
                        if redo:
                            commit.redoing.add(key)
                        client = await self._client(stage.provider)
                        task = self._item(stage, gen, item, key, round_no, client, commit.fresh, journal)
                        await pool.submit(task)
                        self._advance(commit)
                    await pool.drain(on_done=partial(self._advance, commit))
                self._advance(commit)
                report.counts["pending"] += len(commit.order)
                gen.accept(commit.kept)
                if self.stopping.is_set():
                    break
            for f in chain:
                report.filter_stats[f.name] = f.stats()
            if writer:
                writer.commit()
            report.stats = gen.stats(read_outcome(stage_dir, "kept"))  # streamed: memory stays flat
        except BaseException:
            if writer:
                writer.abort()
            raise
        finally:
            journal.close()
            self.progress.stop()
        report.seconds = time.monotonic() - started
        self._log_stage(report)
        return report

    def _advance(self, commit: RoundCommit) -> None:
        self.progress.update(commit.advance(), self._stats())

    async def _item(
        self,
        stage: StageSpec,
        gen: Any,
        item: WorkItem,
        key: str,
        round_no: int,
        client: Any,
        fresh: dict[str, dict[str, Any]],
        journal: Journal,
    ) -> None:
        calls: list[Completion] = []

        async def llm(request: ChatRequest) -> Completion:
            completion = await client(request)
            calls.append(completion)
            return completion

        out_id = gen.output_id(item)
        entry: dict[str, Any] = {"key": key, "id": out_id, "round": round_no, "sample": item.sample}
        try:
            for attempt in range(stage.max_bad_output):
                try:
                    fields = await gen.generate(item, llm, attempt)
                    break
                except BadOutput as exc:
                    last = exc
            else:
                entry.update(status="rejected", filter="parse", reason=str(last), raw_text=last.raw)
                entry["meta"] = _meta(calls, client, stage.max_bad_output)
                fields = None
            if fields is not None:
                record = {**item.record, **fields, "id": out_id}
                if out_id != item.record["id"]:
                    record["source_id"] = item.record["id"]
                record["meta"] = _meta(calls, client, attempt + 1)
                entry.update(status="ok", record=record)
        except Fatal as exc:
            if exc.stop_run:
                self.stop(f"stage {stage.name!r}: {exc}")
                return
            entry.update(status="failed", error=type(exc).__name__, message=str(exc), status_code=exc.status)
        except RunStopped as exc:
            self.stop(str(exc))
            return
        except ProviderError as exc:
            entry.update(status="failed", error=type(exc).__name__, message=str(exc), status_code=exc.status)
        except Exception as exc:  # a generator bug must not take the run down: the record fails visibly
            entry.update(status="failed", error=type(exc).__name__, message=str(exc))
        journal.append(entry)
        fresh[key] = entry
        self._check_budget()

    # ---- commit: one outcome per key -----------------------------------------------------
    # ---- inputs, shards, clients ---------------------------------------------------------
    def _inputs(self, stage: StageSpec) -> Iterator[Record]:
        if stage.input is None:
            return iter(())
        if self._is_stage(stage.input):
            records: Iterable[Record] = self._stage_records(stage.input)
        else:
            path = self.loaded.base_dir / stage.input
            records = _with_ids(path, read_jsonl(path))
        return itertools.islice(records, stage.limit) if stage.limit else iter(records)

    def _is_stage(self, name: str) -> bool:
        return any(s.name == name for s in self.loaded.spec.stages)

    def _stage_records(self, name: str) -> Iterator[Record]:
        """An earlier stage's kept records; in a sharded run, only this shard's (its slice flows on)."""
        stage_dir = self.loaded.out_dir / name
        if self.mode == "run" and self.shard[1] > 1:
            path = stage_dir / "kept" / shard_name(self.shard[0])
            return read_jsonl(path) if path.exists() else iter(())
        return read_outcome(stage_dir, "kept")

    def _checked(self, gen: Any, records: Iterator[Record]) -> Iterator[Record]:
        first = next(records, None)
        if first is None:
            return
        gen.check(first)
        yield first
        yield from records

    def _mine(self, stage: StageSpec, key: str) -> bool:
        # Only stages that read a file are split by key; later stages take their own shard's records.
        index, count = self.shard
        if count == 1 or self.mode != "run" or self._is_stage(stage.input or ""):
            return True
        return key_shard(key, count) == index

    def _expected(self, stage: StageSpec) -> int | None:
        if stage.input is None:
            return None
        if self._is_stage(stage.input):
            n = sum(1 for _ in self._stage_records(stage.input))
        else:
            with open(self.loaded.base_dir / stage.input, "rb") as f:
                n = sum(1 for line in f if line.strip()) // self.shard[1]
        return min(n, stage.limit or n) * stage.samples

    async def _client(self, name: str | None) -> Any:
        if name is None:
            raise SpecError("this stage needs a provider")
        if name not in self.clients:
            from engine.client import LLMClient
            from engine.providers import provider_class

            config = self.loaded.provider_configs[name]
            provider = provider_class(config.kind)(name, config, cache_dir=self.loaded.cache_dir)
            client = LLMClient(provider)
            self.clients[name] = client
            try:
                await client.preflight()
            except (Fatal, ProviderError) as exc:
                raise RunStopped(f"provider {name!r} failed its preflight: {exc}") from None
        return self.clients[name]

    def _in_flight(self, stage: StageSpec) -> int:
        if self.loaded.spec.run.max_in_flight:
            return self.loaded.spec.run.max_in_flight
        config = self.loaded.provider_configs.get(stage.provider or "")
        return 2 * (config.max_concurrency if config else 8)

    def _chain(self, stage: StageSpec) -> list[Filter]:
        chain = []
        for table in stage.filters:
            options = dict(table)
            chain.append(build_filter(options.pop("kind"), options, base_dir=self.loaded.base_dir))
        return chain

    # ---- budget, stats, manifest ---------------------------------------------------------
    def _stats(self) -> dict[str, Any]:
        total: Counter = Counter()
        for client in self.clients.values():
            total.update({k: v for k, v in client.stats.items() if isinstance(v, int | float)})
        return dict(total)

    def _check_budget(self) -> None:
        run, stats = self.loaded.spec.run, self._stats()
        tokens = stats.get("prompt_tokens", 0) + stats.get("completion_tokens", 0)
        if run.max_cost is not None and stats.get("cost", 0) >= run.max_cost:
            self.stop(f"budget reached: cost {stats['cost']:.4f} >= max_cost {run.max_cost}")
        if run.max_tokens is not None and tokens >= run.max_tokens:
            self.stop(f"budget reached: {tokens} tokens >= max_tokens {run.max_tokens}")

    def _log_stage(self, report: StageReport) -> None:
        c = report.counts
        self.progress.log(
            f"{report.name}: kept {c['kept']}, rejected {c['rejected']}, failed {c['failed']}, "
            f"pending {c['pending']} ({report.seconds:.1f}s)"
        )

    def manifest(self) -> dict[str, Any]:
        from engine import versions

        spec = self.loaded.spec
        previous = {}
        path = manifest_path(self.loaded.out_dir, self.shard)
        if path.exists():
            previous = orjson.loads(path.read_bytes())
        stages = dict(previous.get("stages", {}))
        stages.update({name: report.as_dict() for name, report in self.reports.items()})
        providers = {}
        for name, config in self.loaded.provider_configs.items():
            # usage adds up over every invocation of the same run (resumes included)
            entry = {k: v for k, v in previous.get("providers", {}).get(name, {}).items() if k != "window"}
            if name in self.clients:
                for key, value in self.clients[name].stats.items():
                    if isinstance(value, int | float) and key != "window":
                        entry[key] = entry.get(key, 0) + value
            providers[name] = {**entry, "kind": config.kind, "model": config.model}
        pending = sum(s["counts"]["pending"] for s in stages.values())
        return {
            "name": spec.run.name,
            "description": spec.run.description,
            "spec": str(self.loaded.path),
            "spec_hash": self.loaded.hash,
            "overrides": list(self.loaded.overrides),  # `engine run --set` items (engine/named_runs.py)
            "created": previous.get("created", _iso(self.started)),
            "updated": _iso(time.time()),
            "shard": list(self.shard),
            "status": self.stop_reason or ("complete" if pending == 0 else "incomplete"),
            "versions": versions(),
            "providers": providers,
            "stages": stages,
        }


def _with_ids(path: Path, records: Iterable[Record]) -> Iterator[Record]:
    seen: set[str] = set()
    for number, record in enumerate(records, 1):
        if "id" not in record:
            raise SpecError(f"{path}: record {number} has no 'id' field; every input record needs one")
        rid = str(record["id"])
        if rid in seen:
            raise SpecError(f"{path}: record {number} repeats id {rid!r}; ids must be unique")
        seen.add(rid)
        yield record


def _meta(calls: list[Completion], client: Any, attempts: int) -> dict[str, Any]:
    last = calls[-1] if calls else None
    return {
        "provider": client.provider.name,
        "model": last.model if last and last.model else client.provider.config.model,
        "latency_s": round(sum(c.latency_s for c in calls), 4),
        "usage": {
            "prompt_tokens": sum(c.usage.prompt_tokens for c in calls),
            "completion_tokens": sum(c.usage.completion_tokens for c in calls),
        },
        "finish_reason": last.finish_reason if last else None,
        "attempts": attempts,
        "calls": len(calls),
    }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
