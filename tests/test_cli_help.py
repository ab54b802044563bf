"""The help a user reads: `runs note` and `eval SPEC:STAGE` are in it, and a command whose dependency is
missing stays listed and says what to install instead of vanishing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.engine_helpers import ROOT, engine


def engine_without(module: str, *args: str) -> subprocess.CompletedProcess:
    """`engine ARGS` in a process where importing `module` fails as if it were not installed."""
    blocked = f"import sys; sys.modules[{module!r}] = None"
    code = f"{blocked}; from engine.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_help_shows_runs_note_named_runs_and_eval_of_a_stage() -> None:
    top = engine("--help").stdout
    assert "runs note NAME" in top and "filter dedupe|leakage" in top
    runs = engine("runs", "--help").stdout
    assert "runs note [-h] [--score SCORE]" in runs and "--text TEXT" in runs
    assert "--only GLOB" in runs
    evaluation = engine("eval", "--help").stdout
    assert "PRED.jsonl|SPEC:STAGE" in evaluation and "--as NAME" in evaluation
    run = engine("run", "--help").stdout
    assert "--set KEY=VALUE" in run and "--as NAME" in run
    for command in ("status", "export", "filter"):
        assert "--as NAME" in engine(command, "--help").stdout


def test_a_missing_dependency_keeps_the_command_listed(tmp_path: Path) -> None:
    listed = engine_without("rapidfuzz", "--help")  # evals.cli imports it at load time
    assert listed.returncode == 0
    assert "eval" in listed.stdout and "unavailable: install rapidfuzz for `engine eval`" in listed.stdout
    used = engine_without("rapidfuzz", "eval", "pred.jsonl")
    assert used.returncode == 2
    assert used.stderr.strip() == "error: install rapidfuzz for `engine eval`: pip install rapidfuzz"


def test_a_dependency_imported_by_the_command_itself_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text('{"id": 1, "feature_content": "x"}\n')
    used = engine_without(
        "sklearn", "select", str(tmp_path / "c.jsonl"), "--like", str(tmp_path / "c.jsonl"), "--top", "1",
        "-o", str(tmp_path / "out.jsonl"),
    )  # fmt: skip
    assert used.returncode == 2
    assert used.stderr.strip() == "error: install sklearn for `engine select`: pip install scikit-learn"
