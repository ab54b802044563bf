"""The task's prompt format, one module for the generators (asking a teacher or a student) and the
trainers (rendering training examples): the prompt texts, the few-shot demos and how they are chosen,
and the answer's JSON.

`FormatSpec` is the config: keys of a diagnosis stage and of a train spec's `[data]` table.
`PromptFormat` is the resolved format (texts and demo records, no paths). It renders [system, user] for a
record and a task, and the answer the model should write. Training saves it beside every adapter as
prompt_format.json; a predict stage's `format_from` reads it back, so a student is asked as it was trained.

Tasks: `joint` (reason + diseases in one answer), `diseases`, `reasons` (given the diseases) and `check`
(two-stage turn 2: the evidence for turn 1's diseases, which it may correct). `split` training and
prediction chain `diseases` and `reasons`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from engine.atomic import write_json_atomic
from engine.errors import SpecError
from engine.types import Record
from evals.normalize import as_items, split_diseases, split_reason
from generators.medical.prompts import (
    PROMPTS_DIR,
    DemoChoice,
    DemoPool,
    choose_demos,
    fill,
    render_demos,
    show_list,
)
from generators.medical.schema import DISEASES, INPUT, REASON, answer_fields, answer_json, format_example

log = logging.getLogger(__name__)

Task = Literal["joint", "diseases", "reasons", "check"]
TASKS: tuple[Task, ...] = ("joint", "diseases", "reasons", "check")
SPLIT: tuple[Task, ...] = ("diseases", "reasons")  # the two-model option: one adapter per task
FORMAT_FILE = "prompt_format.json"
FORMAT_VERSION = 1
# The prompt files of the format: `<task>.txt` is a task's user template, `demo_<task>.txt` its demo
# template (else `demo.txt`). A prompts_dir may hold any of them; the rest stay built-in.
TEMPLATE_FILES = (
    "system.txt",
    *(f"{task}.txt" for task in TASKS),
    "demo.txt",
    *(f"demo_{task}.txt" for task in TASKS),
)
SPLITTERS = {DISEASES: split_diseases, REASON: split_reason}


class FormatSpec(BaseModel):
    """How a record becomes a prompt and an answer; the same keys on a stage and in a train spec."""

    model_config = ConfigDict(extra="forbid")

    prompts_dir: str = Field(
        "", description="folder of prompt files; each replaces the built-in file of the same name"
    )
    demos: str = Field("", description="labelled demo pool, JSONL (feature_content, diseases, reason)")
    k: int = Field(0, ge=0, description="demos per prompt (0: zero-shot)")
    demo_choice: DemoChoice = Field(
        "random", description="random: k drawn per record, seeded by seed + record id; first: the first k"
    )
    reason_first: bool = Field(True, description="the answer JSON lists `reason` before `diseases`")

    def resolve(self, base_dir: Path, seed: int) -> PromptFormat:
        """The format with its texts and demo records read (paths relative to `base_dir`)."""
        folder = base_dir / self.prompts_dir if self.prompts_dir else None
        pool = DemoPool(base_dir / self.demos).records if self.demos else []
        return PromptFormat(
            templates=read_templates(folder),
            reason_first=self.reason_first,
            k=self.k,
            demo_choice=self.demo_choice,
            seed=seed,
            pool=pool,
        )


def read_templates(folder: Path | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The format's prompt texts: `base` (default: the built-in files), with the files of `folder` instead."""
    texts = dict(base) if base is not None else _builtin()
    if folder is None:
        return texts
    if not folder.is_dir():
        raise SpecError(f"prompts_dir {folder}: not a folder")
    for path in sorted(folder.glob("*.txt")):
        if path.name not in TEMPLATE_FILES:
            raise SpecError(f"{path}: unknown prompt file (known: {', '.join(TEMPLATE_FILES)})")
        texts[path.name] = path.read_text(encoding="utf-8")
    return texts


def _builtin() -> dict[str, str]:
    return {
        name: (PROMPTS_DIR / name).read_text(encoding="utf-8")
        for name in TEMPLATE_FILES
        if (PROMPTS_DIR / name).is_file()
    }


@dataclass(frozen=True)
class PromptFormat:
    """The resolved format: everything a prompt is made of, with no path left to read."""

    templates: dict[str, str]
    reason_first: bool = True
    k: int = 0
    demo_choice: DemoChoice = "random"
    seed: int = 0
    pool: list[Record] = field(default_factory=list)

    # ---- rendering -----------------------------------------------------------------------------
    @property
    def system(self) -> str:
        return self.templates["system.txt"].strip()

    def fields(self, task: Task) -> list[str]:
        """The answer keys `task` asks for, in the order the model writes them."""
        return answer_fields(
            diseases=task != "reasons", reason=task != "diseases", reason_first=self.reason_first
        )

    def demo_template(self, task: Task) -> str:
        return self.templates.get(f"demo_{task}.txt", self.templates["demo.txt"])

    def demos_for(self, record: Record) -> list[Record]:
        """The demos shown with `record`: the same at training and prediction time (see choose_demos)."""
        return choose_demos(self.pool, self.k, self.seed, record, self.demo_choice)

    def user_text(self, record: Record, task: Task, diseases: Any = None) -> str:
        """The user message; `diseases` (reasons, check) defaults to the record's own."""
        fields = self.fields(task)
        demo_fields = [REASON] if task == "check" else fields  # a check demo shows how evidence is written
        demos = render_demos(self.demo_template(task), self.demos_for(record), demo_fields)
        given = record.get(DISEASES) if diseases is None else diseases
        return fill(
            self.templates[f"{task}.txt"],
            demos=demos,
            format=format_example(fields),
            feature_content=record[INPUT],
            diseases=None if given is None else show_list(_items(given, DISEASES, record)),
        )

    def messages(self, record: Record, task: Task, diseases: Any = None) -> list[dict[str, str]]:
        """[system, user] for `record`."""
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user_text(record, task, diseases)},
        ]

    def answer(self, record: Record, task: Task) -> str:
        """The answer the model should write for `record`: its labels as JSON lists, in the format's order."""
        fields = self.fields(task)
        return answer_json({f: _items(record[f], f, record) for f in fields}, fields)

    def example(self, record: Record, task: Task, source: str = "data.train") -> dict[str, Any]:
        """A TRL conversational prompt-completion example; SpecError names the record and the field."""
        needed = [INPUT, *self.fields(task), *([DISEASES] if task in ("reasons", "check") else [])]
        for name in needed:
            if record.get(name) in (None, "", []):
                raise SpecError(
                    f"{source}: record {record.get('id', '?')}: missing field {name!r} (absent or empty; "
                    f"records need {INPUT}, {DISEASES}, {REASON}; `engine import` maps other names)"
                )
        completion = [{"role": "assistant", "content": self.answer(record, task)}]
        return {"prompt": self.messages(record, task), "completion": completion}

    # ---- saved with an adapter -----------------------------------------------------------------
    def to_dict(self, tasks: list[str] | tuple[str, ...]) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "tasks": list(tasks),
            **dataclasses.asdict(self),
        }

    def save(self, folder: Path, tasks: list[str] | tuple[str, ...]) -> Path:
        """Write prompt_format.json into `folder` (atomically); `tasks` are the ones trained there."""
        path = folder / FORMAT_FILE
        write_json_atomic(path, self.to_dict(tasks))
        return path

    def changes(self, other: PromptFormat) -> list[str]:
        """What differs from `other`, one short phrase each (for warnings)."""
        out = [
            f"{name} {getattr(other, name)!r} -> {getattr(self, name)!r}"
            for name in ("k", "demo_choice", "reason_first", "seed")
            if getattr(self, name) != getattr(other, name)
        ]
        texts = sorted(n for n in set(self.templates) | set(other.templates)
                       if self.templates.get(n) != other.templates.get(n))  # fmt: skip
        if texts:
            out.append(f"prompt files {', '.join(texts)}")
        if self.pool != other.pool:
            out.append(f"demo pool ({len(other.pool)} -> {len(self.pool)} records)")
        return out


@dataclass(frozen=True)
class SavedFormat:
    """A format read back from an adapter's folder, with the tasks it was trained on."""

    format: PromptFormat
    tasks: tuple[str, ...]
    path: Path


def find_format(folder: Path) -> Path | None:
    """prompt_format.json in `folder` or its parent (a checkpoint-N folder, a split pair's diseases/)."""
    for candidate in (folder, folder.parent):
        if (candidate / FORMAT_FILE).is_file():
            return candidate / FORMAT_FILE
    return None


def load_format(folder: Path, key: str = "format_from") -> SavedFormat:
    """The format saved by `engine train` in `folder` (an output dir, adapter, checkpoint or merged model)."""
    path = folder if folder.suffix == ".json" else find_format(folder)
    if path is None or not path.is_file():
        raise SpecError(
            f"{key} {folder}: no {FORMAT_FILE} there or in its parent; give the output_dir of "
            "`engine train sft|dpo`, or of `train first` on labelled records (they write the file), or "
            "set the prompt keys yourself"
        )
    try:
        data = orjson.loads(path.read_bytes())
        version, tasks = data.pop("format_version"), tuple(data.pop("tasks"))
        if version != FORMAT_VERSION:
            raise SpecError(f"{path}: format_version {version}; this engine reads {FORMAT_VERSION}")
        return SavedFormat(PromptFormat(**data), tasks, path)
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise SpecError(f"{path}: not a prompt format file ({type(exc).__name__}: {exc})") from None


def apply_overrides(saved: PromptFormat, spec: FormatSpec, keys: set[str], base_dir: Path) -> PromptFormat:
    """`saved` with the keys a stage sets itself (`keys`) taken from `spec` instead."""
    changes: dict[str, Any] = {k: getattr(spec, k) for k in ("k", "demo_choice", "reason_first") if k in keys}
    if "prompts_dir" in keys and spec.prompts_dir:
        changes["templates"] = read_templates(base_dir / spec.prompts_dir, saved.templates)
    if "demos" in keys:
        changes["pool"] = DemoPool(base_dir / spec.demos).records if spec.demos else []
    return dataclasses.replace(saved, **changes)


def _items(value: Any, name: str, record: Record) -> list[str]:
    try:
        return as_items(value, SPLITTERS[name], field=name)
    except ValueError as exc:
        raise SpecError(f"record {record.get('id', '?')}: {exc}") from None
