"""A bounded set of asyncio tasks: at most `limit` alive, so memory stays flat however long the input."""

from __future__ import annotations

import asyncio
from typing import Any


class TaskPool:
    """At most `limit` tasks alive: memory stays flat however long the input is."""

    def __init__(self, limit: int):
        self.slots = asyncio.Semaphore(limit)
        self.tasks: set[asyncio.Task] = set()
        self.error: BaseException | None = None

    async def __aenter__(self) -> TaskPool:
        return self

    async def submit(self, coro: Any) -> None:
        await self.slots.acquire()
        if self.error:
            coro.close()
            raise self.error
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.slots.release()
        if not task.cancelled() and task.exception() and not self.error:
            self.error = task.exception()  # a bug in the engine itself: re-raised, never swallowed

    async def drain(self, on_done: Any = None) -> None:
        while self.tasks:
            await asyncio.wait(set(self.tasks), return_when=asyncio.FIRST_COMPLETED)
            if on_done:
                on_done()
        if self.error:
            raise self.error

    async def __aexit__(self, *exc: Any) -> None:
        if exc[0] is not None:
            for task in self.tasks:
                task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
