"""Prompt text helpers: reading the Chinese prompt files (built-in, or a file the spec names), filling
their `{placeholders}`, and the labelled demo pool with its two deterministic ways of choosing k demos."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Literal

from engine.errors import SpecError
from engine.jsonl import numbered_jsonl
from engine.types import Record
from evals.normalize import as_items, split_diseases, split_reason
from generators.medical.schema import DISEASES, INPUT, REASON, answer_json

PROMPTS_DIR = Path(__file__).parent / "prompts"
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")

DemoChoice = Literal["random", "first"]


def read_prompt(override: str | None, default: str, base_dir: Path) -> str:
    """The text of `override` (a path relative to the spec's folder) or of the built-in file `default`."""
    path = (base_dir / override) if override else PROMPTS_DIR / default
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"prompt file {path}: cannot read ({exc.strerror}); check the path") from None


def fill(template: str, **values: Any) -> str:
    """Replace `{name}` placeholders; unlike str.format, JSON braces shown in a prompt stay as they are."""

    def value(match: re.Match) -> str:
        found = values.get(match.group(1))
        return match.group(0) if found is None else str(found)

    return _PLACEHOLDER.sub(value, template)  # one pass: a filled-in text is never filled again


def show_list(items: list[str]) -> str:
    """Diseases as prompt text: joined with the Chinese semicolon, as the task writes them."""
    return "；".join(items)


def labelled(record: Record, where: str) -> Record:
    """A demo record with `diseases` and `reason` as lists of items (the official strings are split);
    SpecError naming `where` when a field is missing or empty."""
    for field in (INPUT, DISEASES, REASON):
        if not record.get(field):
            raise SpecError(f"{where}: demo record has no {field!r}; demos must be labelled")
    try:
        diseases = as_items(record[DISEASES], split_diseases, field=DISEASES)
        reason = as_items(record[REASON], split_reason, field=REASON)
    except ValueError as exc:
        raise SpecError(f"{where}: {exc}") from None
    return {**record, DISEASES: diseases, REASON: reason}


class DemoPool:
    """Labelled records (`feature_content`, `diseases`, `reason`) to choose few-shot demos from."""

    def __init__(self, path: Path):
        self.path = path
        self.records: list[Record] = []
        for number, record in numbered_jsonl(path):
            demo = labelled(record, f"{path}:{number}")
            rid = record.get("id", f"{path.name}:{number}")
            # only what a prompt shows, so a saved format stays small
            self.records.append({"id": rid, **{f: demo[f] for f in (INPUT, DISEASES, REASON)}})
        if not self.records:
            raise SpecError(f"demo pool {path} holds no records")

    def draw(self, k: int, seed: int, record: Record, choice: DemoChoice = "random") -> list[Record]:
        return choose_demos(self.records, k, seed, record, choice)


def choose_demos(pool: list[Record], k: int, seed: int, record: Record, choice: DemoChoice) -> list[Record]:
    """k demos for `record`, never the record itself (same id or same input text), the same on every run:
    `first`: the first k of the pool; `random`: k drawn with `random.Random("<seed>:<record id>")`."""
    if k <= 0:
        return []
    rid, text = str(record.get("id")), record.get(INPUT)
    candidates = [d for d in pool if str(d["id"]) != rid and d[INPUT] != text]
    if choice == "first":
        return candidates[:k]
    rng = random.Random(f"{seed}:{rid}")  # str seeds hash with sha512: stable across processes
    return rng.sample(candidates, min(k, len(candidates)))


def render_demos(template: str, demos: list[Record], fields: list[str]) -> str:
    """The demo block of a prompt: `template` filled once per demo ({n}, {feature_content}, {diseases},
    {reason}, {answer} = the demo's answer as the JSON the model should write)."""
    return "".join(
        fill(
            template,
            n=n,
            feature_content=demo[INPUT],
            diseases=show_list(demo[DISEASES]),
            reason=show_list(demo[REASON]),
            answer=answer_json(demo, fields),
        )
        for n, demo in enumerate(demos, 1)
    )
