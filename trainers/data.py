"""Engine answer records -> TRL conversational prompt-completion examples.

A record carries an input field (the patient record), a label field (diseases) and a reason field. The
prompt is [system, user] from the prompt files; the completion is one assistant message holding the
answer as JSON, so TRL supervises only the answer. Tasks: `joint` (reason + label), `diseases` (label
only) and `reasons` (reason, given the label in the prompt) - the last two are the `split` mode.
"""

from __future__ import annotations

import glob
import json
import os
import random
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson

from engine.errors import SpecError
from engine.types import Record
from trainers.spec import DataSpec, TrainSpec

Task = Literal["joint", "diseases", "reasons"]
TASKS: tuple[Task, ...] = ("joint", "diseases", "reasons")
PROMPTS_DIR = Path(__file__).parent / "prompts"


def read_jsonl(path: Path) -> list[Record]:
    """Records of one JSONL file; a torn last line (no newline, a write cut short) is skipped."""
    records = []
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise SpecError(f"{path}:{number}: invalid JSON ({exc}); fix or remove the line") from None
    return records


def stage_files(run_spec: Path, stage: str) -> list[Path]:
    """Kept shards of a run stage: `<run out>/<stage>/kept/*.jsonl` ([run] out of the run spec)."""
    try:
        out = tomllib.loads(run_spec.read_text(encoding="utf-8"))["run"]["out"]
    except FileNotFoundError:
        raise SpecError(f"{run_spec}: run spec not found") from None
    except (KeyError, TypeError, tomllib.TOMLDecodeError):
        raise SpecError(f"{run_spec}: needs [run] out = '...' to locate stage {stage!r}") from None
    kept = run_spec.parent / out / stage / "kept"
    return sorted(kept.glob("*.jsonl"))


def source_files(spec: TrainSpec, source: str, key: str) -> list[Path]:
    """The JSONL files of one source (made absolute when the spec loaded): a file or glob, or
    'spec.toml:stage' (that stage's kept shards). `key` names the spec key in errors."""
    head, sep, stage = source.rpartition(":")
    if sep and head.endswith(".toml"):
        run_spec = Path(head)
        files = stage_files(run_spec, stage)
        hint = f"run `python -m engine run {os.path.relpath(run_spec)}` first"
    else:
        files = sorted(Path(p) for p in glob.glob(source))
        hint = "check the path (relative to the train spec)"
    if not files:
        raise spec.fail(key, f"{source!r} matches no JSONL file; {hint}")
    return files


def read_sources(spec: TrainSpec, sources: list[str], key: str) -> list[Record]:
    """Records from JSONL files/globs and 'spec.toml:stage' sources, in the order given."""
    return [r for source in sources for file in source_files(spec, source, key) for r in read_jsonl(file)]


@dataclass
class Prompts:
    """The prompt files of one task folder: system.txt, <task>.txt, demo.txt (demo_<task>.txt wins)."""

    system: str
    users: dict[str, str]
    demos: dict[str, str]

    @classmethod
    def load(cls, folder: Path) -> Prompts:
        def read(name: str) -> str:
            try:
                return (folder / name).read_text(encoding="utf-8")
            except FileNotFoundError:
                raise SpecError(f"prompt file missing: {folder / name}") from None

        def optional(name: str, fallback: str) -> str:
            return read(name) if (folder / name).exists() else fallback

        demo = optional("demo.txt", "")
        return cls(
            system=read("system.txt").strip(),
            users={task: read(f"{task}.txt") for task in TASKS},
            demos={task: optional(f"demo_{task}.txt", demo) for task in TASKS},
        )


def _fill(template: str, **values: str) -> str:
    # str.format would choke on the JSON braces a prompt may show as an example.
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def show(value: Any) -> str:
    """A label value as prompt text: lists joined with the Chinese semicolon, as the task writes them."""
    return "；".join(str(v) for v in value) if isinstance(value, list) else str(value)


class Formatter:
    """Builds prompts and answers for a task from the spec's field names and prompt files."""

    def __init__(self, data: DataSpec, prompts: Prompts, demos: list[Record] | None = None):
        self.data = data
        self.prompts = prompts
        self.demo_records = list(demos or [])[: data.num_demos]

    @classmethod
    def default(cls) -> Formatter:
        """Default field names and the built-in prompts, no demos."""
        return cls(DataSpec(), Prompts.load(PROMPTS_DIR))

    @classmethod
    def from_spec(cls, spec: TrainSpec) -> Formatter:
        folder = Path(spec.data.prompts_dir) if spec.data.prompts_dir else PROMPTS_DIR
        demos = read_jsonl(Path(spec.data.demos)) if spec.data.demos and spec.data.num_demos else []
        return cls(spec.data, Prompts.load(folder), demos)

    def answer_fields(self, task: Task) -> list[str]:
        d = self.data
        if task == "diseases":
            return [d.label_field]
        if task == "reasons":
            return [d.reason_field]
        return [d.reason_field, d.label_field] if d.reason_first else [d.label_field, d.reason_field]

    def answer(self, record: Record, task: Task) -> str:
        return json.dumps({f: record[f] for f in self.answer_fields(task)}, ensure_ascii=False)

    def prompt(self, record: Record, task: Task, label: Any = None) -> list[dict[str, str]]:
        """[system, user]; `label` (the reasons task) defaults to the record's own label."""
        d = self.data
        label = record.get(d.label_field, "") if label is None else label
        demos = "".join(
            _fill(
                self.prompts.demos[task],
                input=str(r[d.input_field]),
                label=show(r[d.label_field]),
                answer=self.answer(r, task),
            )
            for r in self.demo_records
            if r.get(d.id_field, object()) != record.get(d.id_field)
        )
        user = _fill(
            self.prompts.users[task], demos=demos, input=str(record[d.input_field]), label=show(label)
        )
        return [{"role": "system", "content": self.prompts.system}, {"role": "user", "content": user}]

    def example(self, record: Record, task: Task) -> dict[str, Any]:
        completion = [{"role": "assistant", "content": self.answer(record, task)}]
        return {"prompt": self.prompt(record, task), "completion": completion}

    def examples(self, records: list[Record], task: Task, source: str = "data.train") -> list[dict[str, Any]]:
        """Examples for every record; a record lacking a needed field fails naming its id and the field."""
        needed = [self.data.input_field, *self.answer_fields(task)]
        if task == "reasons":
            needed.append(self.data.label_field)
        for index, record in enumerate(records):
            for field in needed:
                if field not in record:
                    rid = record.get(self.data.id_field, f"#{index}")
                    raise SpecError(f"{source}: record {rid}: missing field {field!r} (set data.*_field?)")
        return [self.example(r, task) for r in records]


def split_validation(spec: TrainSpec, records: list[Record]) -> tuple[list[Record], list[Record]]:
    """(train, validation): the spec's validation files, else a seeded random share of the records."""
    if spec.data.validation:
        return records, read_sources(spec, spec.data.validation, "data.validation")
    fraction = spec.data.validation_fraction
    if fraction == 0 or len(records) < 2:
        return records, []
    order = list(range(len(records)))
    random.Random(spec.seed).shuffle(order)
    held = set(order[: max(1, round(fraction * len(records)))])
    return [r for i, r in enumerate(records) if i not in held], [
        r for i, r in enumerate(records) if i in held
    ]


def _write_jsonl(rows: Iterable[dict[str, Any]], out: BinaryIO) -> int:
    count = 0
    for row in rows:
        out.write(orjson.dumps(row) + b"\n")
        count += 1
    return count


def export_sft(records: Iterable[Record], out: BinaryIO) -> int:
    """`engine export --format sft`: answer records as joint prompt-completion JSONL (built-in prompts)."""
    formatter = Formatter.default()
    rows = ({"id": r.get("id"), **formatter.examples([r], "joint", "export")[0]} for r in records)
    return _write_jsonl(rows, out)


def export_dpo(records: Iterable[Record], out: BinaryIO) -> int:
    """`engine export --format dpo`: records with chosen/rejected answers as conversational pairs."""
    from trainers.pairs import pair_from_record

    formatter = Formatter.default()
    return _write_jsonl((pair_from_record(r, formatter) for r in records), out)
