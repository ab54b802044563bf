"""What a run has spent, and its budget: one ledger line per request as its answer (or error) arrives,
so killed invocations count too, and `max_tokens` / `max_cost` checked before every request.

    <out>/spend/shard-0000I.jsonl   {"t", "provider", "status", "attempt", "prompt_tokens", ...}

Each writer appends to its own file (the one of the shard it holds); totals add up every file, so
budgets and `engine status` cover the whole run: every invocation, every shard.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from engine.errors import RunStopped
from engine.journal import append_line, shard_name
from engine.jsonl import jsonl_lines

REFRESH_S = 1.0  # how often other shards' ledgers are re-read while a budget is being checked


class Ledger:
    def __init__(self, out_dir: Path, shard: int | None = None):
        self.dir = out_dir / "spend"
        self.path = self.dir / shard_name(shard) if shard is not None else None
        self._fd = -1
        if self.path is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.offsets: dict[Path, tuple[int, int]] = {}  # ledger -> (line number, offset) read up to
        self.totals: dict[str, Counter] = {}
        self.refreshed = 0.0
        self.refresh()

    def refresh(self) -> None:
        """Read what every ledger gained since the last look (complete lines only)."""
        self.refreshed = time.monotonic()
        for path in sorted(self.dir.glob("shard-*.jsonl")):
            number, offset = self.offsets.get(path, (1, 0))
            with open(path, "rb") as f:
                f.seek(offset)
                for line in jsonl_lines(f, path, tail="wait", start=(number, offset)):
                    self._add(line.record)
                    number, offset = line.number + 1, line.offset + len(line.raw)
            self.offsets[path] = (number, offset)

    def _add(self, line: dict[str, Any]) -> None:
        total = self.totals.setdefault(line["provider"], Counter())
        status = line.get("status")
        total["requests"] += 1
        total["ok" if status == 200 else "rate_limited" if status == 429 else "errors"] += 1
        total["retries"] += line.get("attempt", 1) > 1
        for key in ("prompt_tokens", "completion_tokens", "cost"):
            total[key] += line.get(key, 0)

    def record(
        self, provider: str, status: int | None, attempt: int, usage: Any = None, cost: float = 0.0
    ) -> None:
        line: dict[str, Any] = {"t": round(time.time(), 3), "provider": provider, "status": status}
        line["attempt"] = attempt
        if usage is not None:
            line.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
        if cost:
            line["cost"] = cost
        data = orjson.dumps(line) + b"\n"
        assert self.path is not None, "a read-only ledger"
        offset = append_line(self._fd, data, self.path)
        number, read = self.offsets.get(self.path, (1, 0))
        if read == offset:  # we had read all of our own file: count it now
            self.offsets[self.path] = (number + 1, offset + len(data))
            self._add(line)

    def spent(self) -> tuple[int, float]:
        tokens = sum(t["prompt_tokens"] + t["completion_tokens"] for t in self.totals.values())
        return tokens, sum(t["cost"] for t in self.totals.values())

    def usage(self) -> dict[str, dict[str, Any]]:
        return {name: dict(total) for name, total in self.totals.items()}

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Budget:
    """`[run] max_tokens` / `max_cost` over the ledger. A request is sent only while the spend plus what
    the requests in flight reserved (their estimates) stays within budget; over it, or when one request
    alone would pass it and others are in flight, it waits for them. So one invocation overshoots by at
    most what its in-flight requests used beyond their estimates."""

    def __init__(self, ledger: Ledger, max_tokens: int | None, max_cost: float | None, where: str):
        self.ledger = ledger
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        self.where = where  # the spec file, named in the message
        self.reserved_tokens = 0
        self.reserved_cost = 0.0
        self.in_flight = 0
        self._settled: asyncio.Event | None = None

    @property
    def active(self) -> bool:
        return self.max_tokens is not None or self.max_cost is not None

    def check(self) -> None:
        """Raise RunStopped when the run's spend already reached its budget (nothing is sent)."""
        if time.monotonic() - self.ledger.refreshed > REFRESH_S:
            self.ledger.refresh()
        tokens, cost = self.ledger.spent()
        if self.max_tokens is not None and tokens >= self.max_tokens:
            raise RunStopped(
                f"budget reached: this run spent {tokens} tokens (every invocation and shard) of "
                f"max_tokens = {self.max_tokens}; raise [run] max_tokens in {self.where} to continue"
            )
        if self.max_cost is not None and cost >= self.max_cost:
            raise RunStopped(
                f"budget reached: this run spent {cost:.4f} (every invocation and shard) of "
                f"max_cost = {self.max_cost}; raise [run] max_cost in {self.where} to continue"
            )

    def _fits(self, tokens: int, cost: float) -> bool:
        spent_tokens, spent_cost = self.ledger.spent()
        if self.max_tokens is not None and spent_tokens + self.reserved_tokens + tokens > self.max_tokens:
            return False
        return self.max_cost is None or spent_cost + self.reserved_cost + cost <= self.max_cost

    @asynccontextmanager
    async def reserve(self, tokens: int, cost: float) -> AsyncIterator[None]:
        if not self.active:
            yield
            return
        while True:
            self.check()
            if self.in_flight == 0 or self._fits(tokens, cost):
                break
            if self._settled is None:
                self._settled = asyncio.Event()
            try:
                await asyncio.wait_for(self._settled.wait(), REFRESH_S)
            except TimeoutError:
                pass
        self.reserved_tokens += tokens
        self.reserved_cost += cost
        self.in_flight += 1
        try:
            yield
        finally:
            self.reserved_tokens -= tokens
            self.reserved_cost -= cost
            self.in_flight -= 1
            if self._settled is not None:
                self._settled.set()
                self._settled = None


class Meter:
    """What LLMClient reports each request to: the budget before sending, the ledger after."""

    def __init__(self, ledger: Ledger, budget: Budget):
        self.ledger = ledger
        self.budget = budget

    @asynccontextmanager
    async def request(
        self, provider: str, attempt: int, estimate: int, cost_estimate: float, *, check: bool = True
    ) -> AsyncIterator[Ticket]:
        ticket = Ticket()
        if check:
            async with self.budget.reserve(estimate, cost_estimate):
                try:
                    yield ticket
                finally:
                    self._record(provider, attempt, ticket)
        else:
            try:
                yield ticket
            finally:
                self._record(provider, attempt, ticket)

    def _record(self, provider: str, attempt: int, ticket: Ticket) -> None:
        if ticket.sent:
            self.ledger.record(provider, ticket.status, attempt, ticket.usage, ticket.cost)


class Ticket:
    """One request's fate, filled in by the client: sent at all, HTTP status, usage and cost."""

    def __init__(self) -> None:
        self.sent = False
        self.status: int | None = None
        self.usage: Any = None
        self.cost = 0.0
