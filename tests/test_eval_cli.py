"""The `eval` command: --json shape, the table, flags mapped onto EvalConfig, one-line errors."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from evals.cli import add_eval_command, main

FIXTURE = Path(__file__).parent / "data" / "eval_submission.jsonl"
ROOT = Path(__file__).parents[1]


def test_json_output_shape(capsys):
    assert main(["eval", str(FIXTURE), "--gold", str(FIXTURE), "--json", "--bootstrap", "50"]) == 0
    report = json.loads(capsys.readouterr().out)
    for group in ("diseases", "reason"):
        assert report[group] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert set(report["grounding"]) == {"mean", "grounded_share", "n_points"}
    assert set(report["stats"]) == {
        "reasons_per_answer",
        "reason_chars_per_answer",
        "diseases_per_answer",
        "input_chars",
    }
    assert report["n_missing"] == 0 and report["combined"] == 1.0
    assert report["config"]["bootstrap"] == 50
    assert all(len(interval) == 2 for interval in report["intervals"].values())


def test_flags_reach_the_config(capsys):
    argv = ["eval", str(FIXTURE), "--json", "--no-drop-qualifiers", "--disease-match", "partial_ratio"]
    assert main(argv + ["--reason-threshold", "0.3", "--weight", "grounding.mean=1"]) == 0
    config = json.loads(capsys.readouterr().out)["config"]
    assert config["drop_qualifiers"] is False and config["disease_match"] == "partial_ratio"
    assert config["reason_threshold"] == 0.3 and config["weights"] == {"grounding.mean": 1.0}


def test_table_without_gold(capsys):
    assert main(["eval", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert "stats.reasons_per_answer" in out and "3.0" in out
    assert "need --gold" in out


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["eval", str(FIXTURE), "--weight", "reason.f1"]) == 2
    assert (
        capsys.readouterr().err
        == "eval: --weight 'reason.f1': expected METRIC=NUMBER, e.g. --weight diseases.f1=0.5\n"
    )
    assert main(["eval", str(FIXTURE), "--grounding-threshold", "1.5"]) == 2
    assert capsys.readouterr().err.startswith("eval: --grounding-threshold: ")
    assert main(["eval", str(tmp_path / "absent.jsonl")]) == 2
    assert "absent.jsonl: cannot open" in capsys.readouterr().err


def test_registers_on_a_parent_parser():
    parser = argparse.ArgumentParser(prog="engine")
    add_eval_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "p.jsonl", "--gold", "g.jsonl", "--matcher", "hungarian"])
    assert (args.pred, args.gold, args.matcher, args.func.__name__) == (
        "p.jsonl",
        "g.jsonl",
        "hungarian",
        "main_eval",
    )


def test_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "evals.cli", "eval", str(FIXTURE), "--gold", str(FIXTURE), "--json"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout)["reason"]["f1"] == 1.0
