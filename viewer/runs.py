"""What the viewer reads about runs besides their records: the run list (engine.history), a run's
usage over its shard manifests, its spec (for a stage's input and its filters' side files) and the
record a near-duplicate rejection names."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import history
from engine.errors import SpecError
from engine.spec import STAGE_NAME, Spec, read_spec
from engine.store import read_manifests

# How rouge_dedupe and leakage name the item a record copies: "... vs id 'c03'", "... seed id 7",
# "... (closest id 't1')", "... of test id 't1'".
_DUPLICATE = re.compile(r"\b(seed id|test id|id) ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|-?\d+)")


@dataclass
class RunRef:
    key: str  # the run folder relative to the viewer's root (posix): stable in URLs
    run: history.Run

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def out_dir(self) -> Path:
        return self.run.out_dir

    @property
    def stages(self) -> list[str]:
        return [s for s in self.run.manifest.get("stages", {}) if STAGE_NAME.match(s)]

    def stage_dir(self, stage: str) -> Path:
        return self.out_dir / stage


def find(root: Path) -> list[RunRef]:
    """Every run under root, oldest first, keyed by its folder relative to root."""
    refs = []
    for run in history.find_runs(root):
        key = run.out_dir.relative_to(root).as_posix()
        refs.append(RunRef("." if key == "" else key, run))
    return refs


def usage(ref: RunRef) -> dict[str, dict[str, Any]]:
    """Per provider: kind, model and numbers (requests, tokens, cost) summed over the shard manifests."""
    providers: dict[str, dict[str, Any]] = {}
    for manifest in read_manifests(ref.out_dir):
        for name, info in manifest.get("providers", {}).items():
            entry = providers.setdefault(name, {"kind": info.get("kind"), "model": info.get("model")})
            for key, value in info.items():
                if isinstance(value, int | float) and key != "window":
                    entry[key] = entry.get(key, 0) + value
    return providers


def pending(ref: RunRef, stage: str) -> int | None:
    """Items without an outcome when the run last wrote manifest.json (`engine status` recounts)."""
    value = ref.run.manifest.get("stages", {}).get(stage, {}).get("counts", {}).get("pending")
    return value if isinstance(value, int) else None


def spec_of(ref: RunRef) -> tuple[Spec, Path] | None:
    """The run's spec (as its manifest names it, else `spec.toml` beside the output folder) with the
    `--set` overrides of a named run applied, and its folder; None when it is gone or no longer parses.
    Only read, never built: no provider or generator is made."""
    candidates = [ref.run.manifest.get("spec"), ref.out_dir.parent / "spec.toml"]
    for candidate in candidates:
        if not candidate or not Path(candidate).is_file():
            continue
        path = Path(candidate)
        try:
            return read_spec(path, ref.run.manifest.get("overrides") or [])[0], path.parent
        except SpecError:
            continue
    return None


def stage_spec(ref: RunRef, stage: str) -> tuple[Any, Path] | None:
    found = spec_of(ref)
    if found is None:
        return None
    for spec_stage in found[0].stages:
        if spec_stage.name == stage:
            return spec_stage, found[1]
    return None


def input_source(ref: RunRef, stage: str) -> list[tuple[str, Path]] | None:
    """Where a stage's input records are: an earlier stage's kept files, or the JSONL file the spec
    names; None when unknown."""
    found = stage_spec(ref, stage)
    if found is None or not found[0].input:
        return None
    spec_stage, base = found
    if spec_stage.input in ref.run.manifest.get("stages", {}):
        from engine.store import stage_files

        return [("input", p) for p in stage_files(ref.stage_dir(spec_stage.input), "kept")]
    path = base / spec_stage.input
    return [("input", path)] if path.is_file() else None


def duplicate_ref(reason: str) -> tuple[str, Any] | None:
    """("id" | "seed id" | "test id", the id) named in a dedupe or leakage reason, else None."""
    found = _DUPLICATE.search(reason or "")
    if found is None:
        return None
    try:
        return found.group(1), ast.literal_eval(found.group(2))
    except (ValueError, SyntaxError):
        return None


def side_files(ref: RunRef, stage: str, filter_name: str, kind: str, reason: str) -> list[Path]:
    """The seed pool or test files of the stage's filter a reason refers to (relative to the spec)."""
    found = stage_spec(ref, stage)
    if found is None:
        return []
    spec_stage, base = found
    key = "seed" if kind == "seed id" else "test"
    paths: list[tuple[str, Path]] = []  # (as the spec writes it, where it is)
    for options in spec_stage.filters:
        if options.get("kind") != filter_name or not options.get(key):
            continue
        values = options[key] if isinstance(options[key], list) else [options[key]]
        paths += [(str(v), base / v) for v in values]
    named = [p for written, p in paths if f" in {written}:" in reason]  # leakage names the file it hit
    return [p for p in (named or [p for _, p in paths]) if p.is_file()]
