"""Helpers for engine tests: write a spec and its input next to each other, run the CLI."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
# the stage `write_spec` writes unless told otherwise; a test adds keys below it or stages after it
ANSWER_STAGE = """
[[stages]]
name = "answer"
generator = "template"
provider = "teacher"
input = "cases.jsonl"
prompt = "Answer briefly: {question}"
"""


def write_cases(path: Path, n: int, text: str = "question number {i}") -> list[str]:
    ids = [f"c{i:04d}" for i in range(n)]
    path.write_bytes(
        b"".join(orjson.dumps({"id": rid, "question": text.format(i=i)}) + b"\n" for i, rid in enumerate(ids))
    )
    return ids


def write_spec(
    folder: Path,
    url: str,
    *,
    provider: str = "",
    stages: str = "",
    run: str = "",
    cases: int = 20,
    concurrency: int = 8,
) -> Path:
    write_cases(folder / "cases.jsonl", cases)
    spec = f"""
[run]
name = "t"
out = "out"
{run}

[providers.teacher]
kind = "openai"
base_url = "{url}"
model = "test-model"
api_key_env = "TEST_ENGINE_KEY"
max_concurrency = {concurrency}
{provider}
"""
    spec += stages or ANSWER_STAGE
    path = folder / "spec.toml"
    path.write_text(spec)
    return path


def engine(*args: Any, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TEST_ENGINE_KEY": "sk-test-secret-123", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"engine {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def engine_here(*args: Any, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m engine ARGS` inside this process: the same CLI, real HTTP, no interpreter start (about
    2 s less per call). For steps without crashes or signals; those need `engine()`, a real process."""
    from engine.cli import main

    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()
    key = os.environ.get("TEST_ENGINE_KEY")
    os.environ["TEST_ENGINE_KEY"] = "sk-test-secret-123"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main([str(a) for a in args])
            except SystemExit as exc:  # argparse
                rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        if key is None:
            del os.environ["TEST_ENGINE_KEY"]
        else:
            os.environ["TEST_ENGINE_KEY"] = key
    out.flush()
    proc = subprocess.CompletedProcess(args, rc, out.buffer.getvalue().decode(), err.getvalue())
    if check and rc != 0:
        raise AssertionError(f"engine {args} exited {rc}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_lines(path: Path) -> list[dict[str, Any]]:
    return (
        [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        if path.exists()
        else []
    )


def outcomes(out: Path, stage: str, kind: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted((out / stage / kind).glob("shard-*.jsonl")):
        rows += read_lines(path)
    return rows


def outcome_keys(out: Path, stage: str) -> dict[str, list[tuple[int, str]]]:
    """key -> [(shard, outcome), ...] over every derived file of a stage (kept records carry meta.key)."""
    found: dict[str, list[tuple[int, str]]] = {}
    for kind in ("kept", "rejected", "failed"):
        for path in sorted((out / stage / kind).glob("shard-*.jsonl")):
            for row in read_lines(path):
                key = row["meta"]["key"] if kind == "kept" else row["key"]
                found.setdefault(key, []).append((int(path.stem.removeprefix("shard-")), kind))
    return found


def journal_keys(out: Path, stage: str, shard: int) -> set[str]:
    return {e["key"] for e in read_lines(out / stage / "raw" / f"shard-{shard:05d}.jsonl")}


def assert_exactly_once(out: Path, stage: str) -> dict[str, list[tuple[int, str]]]:
    """The invariant: every work key at most once in kept/rejected/failed, each record in the derived
    files of the shard whose journal holds its outcome, and kept ids unique."""
    found = outcome_keys(out, stage)
    twice = {key: where for key, where in found.items() if len(where) > 1}
    assert not twice, f"{stage}: keys in more than one outcome file: {twice}"
    journals: dict[int, set[str]] = {}
    for key, [(shard, _)] in found.items():
        if shard not in journals:
            journals[shard] = journal_keys(out, stage, shard)
        assert key in journals[shard], f"{stage}: {key} derived in shard {shard}, not in its journal"
    ids = [r["id"] for r in outcomes(out, stage, "kept")]
    assert len(ids) == len(set(ids)), f"{stage}: a kept id twice"
    return found
