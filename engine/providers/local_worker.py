"""One worker thread that owns a model: coroutines submit jobs and await them without blocking the event
loop; the thread drains the queue in batches (what arrives within `wait_s`, up to `batch_size` jobs
of the batched kind) and hands each batch to a handler."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CLOSE_WAIT_S = 5.0  # how long close() waits for the batch in hand; the daemon thread never blocks exit


@dataclass
class Job:
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    # Set when the caller stopped waiting after the job started: the handler may cut it short.
    abandoned: threading.Event = field(default_factory=threading.Event)


class BatchWorker:
    def __init__(
        self,
        handle: Callable[[list[Job]], None],
        *,
        batched_kind: str,
        batch_size: int,
        wait_s: float,
        name: str,
    ):
        """`handle(jobs)` runs on the worker thread and must settle every job's future."""
        self._handle, self._batched_kind = handle, batched_kind
        self._batch_size, self._wait_s, self._name = batch_size, wait_s, name
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    async def submit(self, kind: str, payload: dict[str, Any] | None = None) -> Any:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        job = Job(kind, payload or {})
        self._jobs.put(job)
        try:
            return await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            # A queued job is cancelled with the await; a running one can only be told to stop.
            job.abandoned.set()
            raise

    async def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Stop the thread (a later submit starts a new one) once the batch in hand is done; rows whose
        callers gave up stop at the next token. After `wait_s` the daemon thread is left to end with the
        process (a model load cannot be interrupted), so closing never holds up an exit."""
        thread = self._thread
        self._thread = None
        if thread is None or not thread.is_alive():
            return
        self._jobs.put(None)
        deadline = time.monotonic() + wait_s
        while thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            live = [job for job in self._collect(first) if job.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                self._handle(live)
            except BaseException as exc:  # a handler bug must not leave callers waiting forever
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _collect(self, first: Job) -> list[Job]:
        batch = [first]
        deadline = time.monotonic() + self._wait_s
        while sum(job.kind == self._batched_kind for job in batch) < self._batch_size:
            try:
                nxt = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if nxt is None:  # stop after this batch
                self._jobs.put(None)
                break
            batch.append(nxt)
        return batch
