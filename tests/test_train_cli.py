"""`python -m engine train sft|dpo|merge`: the shipped demo spec, --set overrides, the merge command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main as engine_main
from tests.train_helpers import FAST, PROMPTS, RECORDS, ROOT, write_spec
from trainers.spec import load_spec

DEMO = ROOT / "runs" / "demo" / "train.toml"


def test_shipped_demo_spec_is_valid_for_sft_and_dpo():
    sft = load_spec(DEMO)
    assert sft.base_model == "" and sft.data.train == [f"{DEMO.parent / 'spec.toml'}:label_reasons"]
    assert sft.trainer_args("sft")["max_steps"] <= 10  # the demo stays a demo
    dpo = load_spec(DEMO, command="dpo")
    assert dpo.dpo.init_adapter == sft.sft.output_dir == str(DEMO.parent / "out" / "train" / "sft")


def test_train_and_merge_through_the_engine_cli(tmp_path, capsys):
    spec = write_spec(tmp_path, "[sft]\nmax_steps = 5\n" + FAST)
    code = engine_main(["train", "sft", str(spec), "--set", "max_steps=1", "--set", "output_dir=out/try"])
    assert code == 0
    assert json.loads((tmp_path / "out" / "try" / "summary.json").read_text())["steps"] == 1
    assert "sft joint: 1 steps" in capsys.readouterr().out
    assert engine_main(["train", "merge", str(tmp_path / "out" / "try"), "-o", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "config.json").is_file()
    assert engine_main(["train", "merge", str(tmp_path / "nothing"), "-o", str(tmp_path / "m2")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err


def test_module_entry_point_runs_standalone_with_every_registered_method():
    out = subprocess.run(
        [sys.executable, "-m", "trainers.cli", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0 and "{sft,dpo,first,merge}" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "trainers.cli", "first", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0 and "--set KEY=VALUE" in out.stdout and "[first]" in out.stdout


@pytest.mark.slow
def test_demo_spec_trains_the_bundled_smollm2(tmp_path):
    """The one test on the real 135M model: the shipped demo spec, pointed at the fixture records."""
    overrides = [
        f"data.train=['{RECORDS}']",
        f"output_dir='{tmp_path / 'sft'}'",
        "max_steps=1",
        "save_steps=1",
        "per_device_train_batch_size=1",
        f"data.prompts_dir='{PROMPTS}'",  # short prompts: fewer tokens through the 135M model
        "data.max_records=5",
        "data.validation_fraction=0.2",
    ]
    assert engine_main(["train", "sft", str(DEMO), *[a for o in overrides for a in ("--set", o)]]) == 0
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert summary["steps"] == 1 and Path(summary["base_model"]).name.startswith("SmolLM2-135M-Instruct")
    assert summary["evaluation"]["best"]["step"] == 1
