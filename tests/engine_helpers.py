"""Helpers for engine tests: write a spec and its input next to each other, run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]


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
    spec += (
        stages
        or """
[[stages]]
name = "answer"
generator = "template"
provider = "teacher"
input = "cases.jsonl"
prompt = "Answer briefly: {question}"
"""
    )
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
