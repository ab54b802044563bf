"""Runs a spec's stages in order: work items -> provider (limiter, retries) -> journal -> filter chain.

The same loop serves three modes: `run` (request what has no outcome yet), `replay` (no requests;
rebuild kept/rejected/failed from the journals with the current filters) and `status` (no requests,
no writes; count what the files hold). Commit order is deterministic: round, then input order, then
sample. A plain run and a replay hold the whole run (engine/lock.py) and rewrite every shard's
derived files; a run of `--shard I/N` rewrites shard I's only.

Stopping: a budget or a fatal provider error stops sending and lets requests on the wire finish;
SIGINT/SIGTERM also cancel those after `[run] grace_s` (engine/signals.py: a second signal exits at once).
Either way an item without a journal line stays pending, so the same command resumes.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

from engine.atomic import write_json_atomic
from engine.commit import Committer, RoundCommit, StageReport, count_status
from engine.derived import DerivedWriter, derived_outcomes, stale_note
from engine.errors import BadOutput, DiskFull, Fatal, Halted, ProviderError, RunStopped, SpecError
from engine.journal import Journal
from engine.jsonl import numbered_jsonl, read_jsonl
from engine.keys import answer_settings, key_shard, work_key
from engine.lock import RunLock
from engine.manifest import build_manifest
from engine.named_runs import RECORD
from engine.progress import PLAIN_EVERY_S, StageProgress
from engine.signals import SignalStop
from engine.spec import LoadedSpec, StageSpec
from engine.spend import Budget, Ledger, Meter
from engine.store import manifest_path, read_outcome, shard_name
from engine.taskpool import TaskPool
from engine.types import ChatRequest, Completion, Record, WorkItem
from filters.base import Filter, build_filter
from generators.base import Generator

Mode = Literal["run", "replay", "status"]


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
        progress_every_s: float = PLAIN_EVERY_S,
    ):
        self.loaded = loaded
        self.mode = mode
        self.shard = shard
        self.only = set(stages or [])
        self.retry_failed = retry_failed
        self.progress = StageProgress(
            enabled=progress and mode == "run", every_s=progress_every_s, logs=mode == "run"
        )
        self.clients: dict[str, Any] = {}
        self.stopping = asyncio.Event()
        self.stop_reason = ""
        self.signalled: int | None = None  # SIGINT / SIGTERM that stopped the run
        self._grace: asyncio.TimerHandle | None = None
        self._pool: TaskPool | None = None  # the stage's items in flight
        self._preflights: list[asyncio.Task] = []
        self._ready: set[str] = set()  # providers that passed their preflight
        self._current: StageSpec | None = None
        self._stats_at_start: dict[str, Any] = {}
        self._done_in_rounds = 0  # items committed in the stage's earlier rounds (progress counts the stage)
        self.reports: dict[str, StageReport] = {}
        self.started = time.time()
        # a plain run and a replay hold the whole run: they may write (and repair) every shard's files
        self.exclusive = mode == "replay" or (mode == "run" and shard[1] == 1)
        self._own_inputs: dict[str, set[str]] = {}  # chained stage -> ids this shard's previous stage kept
        self.ledger: Ledger | None = None
        self.meter: Meter | None = None
        self.failure: DiskFull | None = None  # the disk filled up: stop, and commit nothing more

    # ---- the run -------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        if self.shard[1] > 1:
            for stage in self.loaded.spec.stages:
                if not self.loaded.generators[stage.name].shardable:
                    raise SpecError(f"stage {stage.name!r} ({stage.generator}) cannot be split with --shard")
        lock = None
        if self.mode != "status":
            lock = RunLock(self.loaded.out_dir).acquire(shard=self.shard, exclusive=self.exclusive)
        try:
            return await self._locked()
        finally:
            if self.ledger is not None:
                self.ledger.close()
            if lock is not None:
                lock.release()

    async def _locked(self) -> dict[str, Any]:
        if self.mode == "run":
            spec = self.loaded.spec.run
            self.ledger = Ledger(self.loaded.out_dir, self.shard[0])
            budget = Budget(self.ledger, spec.max_tokens, spec.max_cost, str(self.loaded.path))
            budget.check()  # a run over budget sends nothing, not even a preflight
            self.meter = Meter(self.ledger, budget)
        signals = SignalStop(asyncio.get_running_loop(), self._on_signal, enabled=self.mode == "run")
        try:
            with signals:
                if self.mode == "run":
                    self._build_clients()  # every key is checked before the first request of the run
                for stage in self._stages():
                    if self.stopping.is_set():
                        self.reports[stage.name] = StageReport(stage.name)
                        continue
                    self.reports[stage.name] = await self._stage(stage)
        finally:
            if self._grace is not None:
                self._grace.cancel()
            for client in self.clients.values():
                await client.aclose()
            self.progress.stop()
        manifest = self.manifest()
        if self.mode != "status":
            write_json_atomic(manifest_path(self.loaded.out_dir, self.shard), manifest)
        return manifest

    def _stages(self) -> list[StageSpec]:
        return [s for s in self.loaded.spec.stages if not self.only or s.name in self.only]

    def stop(self, reason: str, *, grace_s: float | None = None) -> None:
        """Send nothing more; requests on the wire finish (within `grace_s` when given), the rest of the
        items in flight are cancelled at once. Cancelled items have no outcome: they stay pending."""
        if not self.stopping.is_set():
            self.stop_reason = reason
            wait = f"up to {grace_s:g} s " if grace_s is not None else ""
            again = " (a second signal exits at once)" if grace_s is not None else ""
            message = f"{reason}: waiting {wait}for requests in flight, then stopping{again}"
            self.progress.log(message, "yellow")
        self.stopping.set()
        for client in self.clients.values():
            client.halt()
        on_wire = set().union(*(client.on_wire for client in self.clients.values()))
        self._cancel(lambda task: task not in on_wire)
        if grace_s is not None and self._grace is None:
            self._grace = asyncio.get_running_loop().call_later(grace_s, self._cancel, lambda task: True)

    def _on_signal(self, signum: int) -> None:
        self.signalled = signum
        name = signal.Signals(signum).name
        self.stop(f"stopped by {name}", grace_s=self.loaded.spec.run.grace_s)

    def _cancel(self, which: Any) -> None:
        current = asyncio.current_task()
        tasks = [*(self._pool.tasks if self._pool else ()), *self._preflights]
        for task in tasks:
            if task is not current and which(task):
                task.cancel()

    def _fail(self, exc: DiskFull) -> None:
        """Stop without committing more: the error is reported once, when the run ends."""
        self.failure = self.failure or exc
        self.stop_reason = self.stop_reason or str(exc)
        self.stopping.set()

    async def _stage(self, stage: StageSpec) -> StageReport:
        gen = self.loaded.generators[stage.name]
        report = StageReport(stage.name)
        started = time.monotonic()
        stage_dir = self.loaded.out_dir / stage.name
        own = self.shard[0] if self.mode == "run" else None
        journal = Journal(stage_dir, own, exclusive=self.exclusive)
        if journal.torn_bytes:
            self.progress.log(f"{stage_dir / 'raw'}: dropped a torn last line ({journal.torn_bytes} bytes)")
        chain = self._chain(stage)
        writer = None
        if self.mode != "status":
            writer = DerivedWriter(stage_dir, journal.shards() if self.exclusive else [self.shard[0]])
        derived = derived_outcomes(stage_dir) if self.mode == "status" else {}
        feedback = type(gen).accept is not Generator.accept  # keep a round's records only if asked
        settings = answer_settings(self.loaded, stage)
        self._current = stage
        self._stats_at_start = {name: dict(client.stats) for name, client in self.clients.items()}
        self._done_in_rounds = 0
        ticker = None
        try:
            self.progress.start(stage.name, self._expected(stage, gen))
            ticker = asyncio.create_task(self._tick()) if self.progress.enabled else None
            if self.mode == "run":  # after every input record was checked: a bad one opens nothing
                gen.open_outputs(stage_dir, self.shard[0], settings)
            inputs = self._inputs(stage)
            for round_no, items in enumerate(gen.rounds(inputs)):
                commit = RoundCommit(
                    journal, Committer(chain, writer, report, journal), keep_records=feedback
                )
                async with TaskPool(self._in_flight(stage)) as pool:
                    self._pool = pool
                    for item in items:
                        key = work_key(stage.name, item, round_no, settings)
                        if self.mode == "status":
                            count_status(report, key, journal, derived, commit.kept if feedback else None)
                            continue
                        where = journal.shard(key)
                        redo = self.retry_failed and self.mode == "run" and journal.failed(key)
                        redo = redo and self._writes(where) and not self.stopping.is_set()
                        if where is not None and not redo:
                            if self._writes(where):  # an outcome in a journal this process mirrors
                                commit.order.append(key)
                                self._advance(commit)
                            continue
                        if not self._mine(stage, key, item):
                            continue
                        if self.mode != "run" or self.stopping.is_set():
                            commit.pending += 1
                            continue
                        commit.order.append(key)
                        if redo:
                            commit.redoing.add(key)
                        client = await self._client(stage.provider)
                        if self.stopping.is_set():  # a signal during the preflight: left for the final pass
                            continue
                        target = where if redo else None  # a retry goes where the failure is
                        task = self._item(
                            stage, gen, item, key, round_no, client, commit.fresh, journal, target
                        )
                        await pool.submit(task)
                        self._advance(commit)
                    await pool.drain(on_done=partial(self._advance, commit))
                commit.advance(final=True)
                self._done_in_rounds += commit.done
                report.counts["pending"] += commit.pending
                gen.accept(commit.kept)
            if self.failure is not None:
                raise self.failure
            for f in chain:
                report.filter_stats[f.name] = f.stats()
            if writer:
                writer.commit({shard: journal.size(shard) for shard in writer.shards})
            report.stats = gen.stats(read_outcome(stage_dir, "kept"))  # streamed: memory stays flat
            if self.mode == "status":
                self._note_stale(report, stage_dir)
        except BaseException:
            if writer:
                writer.abort()
            raise
        finally:
            self._pool = None
            if ticker is not None:
                ticker.cancel()
            journal.close()
            if self.mode == "run":
                gen.close_outputs()
            self.progress.stop()
        report.seconds = time.monotonic() - started
        self._log_stage(report)
        return report

    def _writes(self, shard: int | None) -> bool:
        """Whether this process rewrites the derived files of `shard` (its own, or all when exclusive)."""
        return shard is not None and (self.exclusive or shard == self.shard[0])

    def _note_stale(self, report: StageReport, stage_dir: Path) -> None:
        behind = report.counts.get("unfiltered", 0)
        if behind:
            replay = f"python -m engine filter {self.loaded.path}"
            if (self.loaded.out_dir / RECORD).exists():  # a named run: `--as NAME` finds it again
                replay += f" --as {self.loaded.spec.run.name}"
            report.notes.append(stale_note(stage_dir, self.loaded.out_dir, replay, behind))

    def _advance(self, commit: RoundCommit) -> None:
        self.progress.update(self._done_in_rounds + commit.advance(), self._stage_stats())

    async def _tick(self) -> None:
        """Refresh the progress line once a second, also while nothing finishes (a pause, a hang)."""
        while True:
            await asyncio.sleep(1.0)
            self.progress.update(None, self._stage_stats())

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
        target: int | None,
    ) -> None:
        calls: list[Completion] = []

        async def llm(request: ChatRequest, provider: str | None = None) -> Completion:
            completion = await (await self._client(provider) if provider else client)(request)
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
        except DiskFull as exc:  # the ledger could not be written
            self._fail(exc)
            return
        except RunStopped as exc:
            self.stop(str(exc))
            return
        except Halted:  # the run is stopping and this request was never sent: the item stays pending
            return
        except ProviderError as exc:
            entry.update(status="failed", error=type(exc).__name__, message=str(exc), status_code=exc.status)
        except Exception as exc:  # a generator bug must not take the run down: the record fails visibly
            entry.update(status="failed", error=type(exc).__name__, message=str(exc))
        try:
            journal.append(entry, target)
        except DiskFull as exc:
            self._fail(exc)
            return
        fresh[key] = entry

    # ---- inputs, shards, clients ---------------------------------------------------------
    def _inputs(self, stage: StageSpec) -> Iterator[Record]:
        if stage.input is None:
            return iter(())
        if self._is_stage(stage.input):
            records: Iterable[Record] = self._stage_records(stage.input)
        else:
            records = read_jsonl(self.loaded.base_dir / stage.input)  # checked by _expected
        return itertools.islice(records, stage.limit) if stage.limit else iter(records)

    def _is_stage(self, name: str) -> bool:
        return any(s.name == name for s in self.loaded.spec.stages)

    def _stage_records(self, name: str) -> Iterator[Record]:
        """An earlier stage's kept records, every shard's: a journal may hold keys of any of them."""
        return read_outcome(self.loaded.out_dir / name, "kept")

    def _own_records(self, name: str) -> Iterator[Record]:
        """The records of an earlier stage that this shard kept: in a sharded run, its slice flows on."""
        path = self.loaded.out_dir / name / "kept" / shard_name(self.shard[0])
        return read_jsonl(path) if path.exists() else iter(())

    def _mine(self, stage: StageSpec, key: str, item: WorkItem) -> bool:
        """Whether this process asks for a key: all of them unless sharded. Stages that read a file are
        split by key hash; later stages take the records their own shard kept."""
        index, count = self.shard
        if count == 1 or self.mode != "run":
            return True
        if self._is_stage(stage.input or ""):
            if stage.name not in self._own_inputs:
                self._own_inputs[stage.name] = {str(r["id"]) for r in self._own_records(stage.input)}
            return str(item.record["id"]) in self._own_inputs[stage.name]
        return key_shard(key, count) == index

    def _expected(self, stage: StageSpec, gen: Generator) -> int | None:
        """Check every input record before the stage sends anything (one line naming file:line on the
        first bad one), and return the stage's total for the progress bar."""
        if stage.input is None:
            return gen.total(None)
        if self._is_stage(stage.input):
            mine = self._own_records if self.mode == "run" and self.shard[1] > 1 else self._stage_records
            n = 0
            for n, record in enumerate(itertools.islice(mine(stage.input), stage.limit), 1):
                _check_record(gen, record, f"stage {stage.input!r}, kept record {n}")
        else:
            path = self.loaded.base_dir / stage.input
            seen: set[str] = set()
            for line, record in itertools.islice(numbered_jsonl(path), stage.limit):
                where = f"{path}:{line}"
                rid = _check_id(record, where)
                if rid in seen:
                    raise SpecError(f"{where}: id {rid!r} repeats an earlier record's; ids must be unique")
                seen.add(rid)
                _check_record(gen, record, where)
            n = len(seen) // self.shard[1]
        return gen.total(n)

    def _build_clients(self) -> None:
        """One client per provider the stages to run use; building one reads its key (SpecError if unset)."""
        from engine.client import LLMClient
        from engine.limiter import build_limiter
        from engine.providers import provider_class

        for name in dict.fromkeys(n for stage in self._stages() for n in self._providers(stage)):
            if name in self.clients:
                continue
            config = self.loaded.provider_configs[name]
            provider = provider_class(config.kind)(name, config, cache_dir=self.loaded.cache_dir)
            limiter = build_limiter(provider, self.loaded.spec.run.limiter, self.shard, log=self.progress.log)
            self.clients[name] = LLMClient(provider, limiter=limiter, meter=self.meter)

    def _providers(self, stage: StageSpec) -> list[str]:
        """The providers a stage asks: its own, then those its generator names (a split prediction's
        reasons model)."""
        names = [stage.provider, *self.loaded.generators[stage.name].extra_providers()]
        return [n for n in names if n]

    async def _client(self, name: str | None) -> Any:
        """The stage's client. Before the first request of the run, every provider this and the later
        stages use is preflighted at once, so a bad key for a later stage stops the run before it pays."""
        if name is None:
            raise SpecError("this stage needs a provider")
        if name not in self._ready:
            stages = self._stages()
            later = stages[stages.index(self._current) :] if self._current in stages else stages
            apis: dict[str, set[str]] = {}
            for s in later:
                for n in self._providers(s):
                    apis.setdefault(n, set()).add(self.loaded.generators[s.name].api(n))
            names = [n for n in apis if n not in self._ready]
            # a provider only a capture stage asks is checked on /completions, as the capture will ask it
            self._preflights = [
                asyncio.create_task(self.clients[n].preflight("chat" if "chat" in apis[n] else "completions"))
                for n in names
            ]
            try:
                results = await asyncio.gather(*self._preflights, return_exceptions=True)
            finally:
                self._preflights = []
            for provider, result in zip(names, results, strict=True):
                if isinstance(result, (Fatal, ProviderError)):
                    raise RunStopped(f"provider {provider!r} failed its preflight: {result}")
                if isinstance(result, Exception):
                    raise result
                if result is None:
                    self._ready.add(provider)
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

    # ---- stats, manifest -----------------------------------------------------------------
    def _stage_stats(self) -> dict[str, Any]:
        """The current stage's provider figures since the stage started (rates are per stage)."""
        name = self._current.provider if self._current else None
        client = self.clients.get(name or "")
        if client is None:
            return {}
        before = self._stats_at_start.get(name, {})
        stats = {k: v - before.get(k, 0) for k, v in client.stats.items() if isinstance(v, int | float)}
        stats["window"] = int(client.limiter.window.size)
        stats["window_max"] = client.limiter.window.limit
        stats["paused_s"] = client.paused_s()
        return stats

    def _log_stage(self, report: StageReport) -> None:
        c = report.counts
        self.progress.log(
            f"{report.name}: kept {c['kept']}, rejected {c['rejected']}, failed {c['failed']}, "
            f"pending {c['pending']} ({report.seconds:.1f}s)"
        )

    def manifest(self) -> dict[str, Any]:
        ledger = self.ledger or Ledger(self.loaded.out_dir)  # every invocation and shard of the run
        reports = {name: report.as_dict() for name, report in self.reports.items()}
        return build_manifest(self.loaded, self.shard, reports, ledger, self.stop_reason, self.started)


def _check_id(record: Record, where: str) -> str:
    rid = record.get("id")
    if "id" not in record:
        raise SpecError(f"{where}: record has no 'id' field; every input record needs one")
    if isinstance(rid, bool) or not isinstance(rid, str | int) or not str(rid).strip():
        raise SpecError(f"{where}: 'id' must be a non-empty string or an integer, got {rid!r}")
    return str(rid)


def _check_record(gen: Generator, record: Record, where: str) -> None:
    """The generator's own check (fields its prompt uses), as one line naming where the record is."""
    try:
        gen.check(record)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None


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
