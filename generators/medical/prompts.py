"""Prompt files and few-shot demos: reading the Chinese prompt texts (built-in, or a file the spec names),
filling their `{placeholders}`, and drawing k labelled demos per record with a seeded RNG."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import orjson

from engine.errors import SpecError
from engine.types import Record
from evals.normalize import as_items, split_diseases, split_reason
from generators.medical.schema import DISEASES, INPUT, REASON, answer_json

PROMPTS_DIR = Path(__file__).parent / "prompts"
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def read_prompt(override: str | None, default: str, base_dir: Path) -> str:
    """The text of `override` (a path relative to the spec's folder) or of the built-in file `default`."""
    path = (base_dir / override) if override else PROMPTS_DIR / default
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"prompt file {path}: cannot read ({exc.strerror}); check the path") from None


def fill(template: str, **values: Any) -> str:
    """Replace `{name}` placeholders; unlike str.format, JSON braces shown in a prompt stay as they are.

    `{input}` and `{label}` are aliases of `{feature_content}` and `{diseases}`, so the trainers' prompt
    files (trainers/prompts/) can be used as they are to query a fine-tuned student.
    """
    values = {"input": values.get("feature_content"), "label": values.get("diseases"), **values}

    def value(match: re.Match) -> str:
        found = values.get(match.group(1))
        return match.group(0) if found is None else str(found)

    return _PLACEHOLDER.sub(value, template)  # one pass: a filled-in text is never filled again


def show_list(items: list[str]) -> str:
    """Diseases as prompt text: joined with the Chinese semicolon, as the task writes them."""
    return "；".join(items)


class DemoPool:
    """Labelled records (`feature_content`, `diseases`, `reason`) to draw few-shot demos from."""

    def __init__(self, path: Path, *, need: tuple[str, ...] = (INPUT, DISEASES, REASON)):
        self.path = path
        self.records: list[Record] = []
        try:
            lines = path.read_bytes().splitlines()
        except OSError as exc:
            raise SpecError(f"demo pool {path}: cannot read ({exc.strerror}); check `demos`") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
                for field in need:
                    if not record.get(field):
                        raise SpecError(
                            f"{path}:{number}: demo record has no {field!r}; demos must be labelled"
                        )
                record = {
                    **record,
                    "id": record.get("id", f"{path.name}:{number}"),
                    DISEASES: as_items(record.get(DISEASES), split_diseases, field=DISEASES),
                    REASON: as_items(record.get(REASON), split_reason, field=REASON),
                }
            except orjson.JSONDecodeError as exc:
                raise SpecError(f"{path}:{number}: not valid JSON ({exc})") from None
            except (ValueError, AttributeError) as exc:
                raise SpecError(f"{path}:{number}: {exc}") from None
            self.records.append(record)
        if not self.records:
            raise SpecError(f"demo pool {path} holds no records")

    def draw(self, k: int, seed: int, record: Record) -> list[Record]:
        """k demos for `record`, the same on every run with the same seed; never the record itself."""
        if k <= 0:
            return []
        rid, text = str(record.get("id")), record.get(INPUT)
        candidates = [d for d in self.records if str(d["id"]) != rid and d[INPUT] != text]
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
