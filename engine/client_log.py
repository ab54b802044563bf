"""What the client tells the user while it works: retries, 429 pauses, breaker pauses and window changes
as one `logging` line each, at most one line per kind and provider every `every_s` seconds (the rest are
counted into the next line), so a 429 storm reads as a few lines. Messages carry provider-redacted error
text only, never a key."""

from __future__ import annotations

import logging
import time
from typing import Any

LOG_EVERY_S = 10.0
log = logging.getLogger("engine.client")

# event -> (level, message template over the event's data)
MESSAGES = {
    "retry": (logging.INFO, "retry {attempt} of {max_retries} in {wait_s:.1f} s after {error}"),
    "rate_limited": (logging.INFO, "HTTP 429: new requests wait {pause_s:.1f} s"),
    "window": (logging.INFO, "concurrency window {old} -> {new} ({why})"),
    "breaker_pause": (
        logging.WARNING,
        "{threshold} requests in a row failed (last: {error}); pausing every request for {pause_s:g} s",
    ),
    "breaker_stop": (logging.ERROR, "{error}"),
    "stop_run": (logging.ERROR, "stopping the run: {error}"),
}
PLURALS = {"retry": "retries", "rate_limited": "429s", "window": "window changes"}


class EventLog:
    """Turns LLMClient events into rate-limited log lines for one provider."""

    def __init__(self, where: str, every_s: float = LOG_EVERY_S):
        self.where = where
        self.every_s = every_s
        self._last: dict[str, float] = {}  # event -> when its last line was written
        self._held: dict[str, int] = {}  # event -> occurrences since that line

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event not in MESSAGES:
            return
        level, template = MESSAGES[event]
        now = time.monotonic()
        urgent = level >= logging.WARNING  # breaker lines are rare and always matter
        if not urgent and now - self._last.get(event, -1e9) < self.every_s:
            self._held[event] = self._held.get(event, 0) + 1
            return
        held = self._held.pop(event, 0)
        since = f" (and {held} more like it in the last {now - self._last[event]:.0f} s)" if held else ""
        self._last[event] = now
        if "error" in data:  # provider errors start with the same "providers.NAME: " as the line
            data = {**data, "error": str(data["error"]).replace(f"{self.where}: ", "")}
        log.log(level, "%s: %s%s", self.where, template.format(**data), since)

    def flush(self) -> None:
        """Say how many lines were held back since the last one (at the end of a run)."""
        for event, held in self._held.items():
            if held:
                log.info("%s: %d more %s after the last line", self.where, held, PLURALS.get(event, event))
        self._held.clear()
