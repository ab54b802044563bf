"""`make demo-first` (runs/demo-first/, docs/first.md) end to end at reduced size, offline: the Makefile's
own recipe, command by command through the engine CLI, on copies of the demo's specs where the tiny random
model (SmolLM2's tokenizer) stands in for the bundled SmolLM2 and the demo's labelled records are the hand-
labelled demos.jsonl (instead of a self-instruct run). The demo's SFT side (the teacher adapter and the
SFT student's scored prediction) runs first, as `make demo` ends."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from engine.jsonl import read_jsonl
from engine.spec import load_spec as load_run_spec
from tests.engine_helpers import ROOT, engine_here, outcomes
from tests.train_helpers import tiny_model
from trainers.first.topk_store import TopKReader
from trainers.spec import load_spec

DEMO, DEMO_FIRST = ROOT / "runs" / "demo", ROOT / "runs" / "demo-first"


def recipe(target: str) -> list[str]:
    """The shell lines of a Makefile target, as `make` would run them."""
    lines = (ROOT / "Makefile").read_text(encoding="utf-8").splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"{target}:"))) + 1
    commands = []
    for line in lines[start:]:
        if not line.startswith("\t"):
            break
        commands.append(line.strip())
    return commands


def copy_specs(source: Path, target: Path, tiny: Path) -> None:
    """The folder's specs and records, the bundled model ("") replaced by the tiny one, also as the
    student's tokenizer of the capture (the tiny folder loads as a Qwen2 tokenizer, which splits some
    text otherwise than the bundled one: the store's prompt digests would refuse every example), and
    half the training steps."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.suffix == ".jsonl":
            shutil.copy(path, target / path.name)
        elif path.suffix == ".toml":
            text = path.read_text(encoding="utf-8")
            for key in ("model", "base_model", "tokenizer"):
                text = text.replace(f'\n{key} = ""', f'\n{key} = "{tiny}"')
            text = text.replace("\nmax_steps = 4", "\nmax_steps = 2")
            (target / path.name).write_text(text, encoding="utf-8")


@pytest.mark.slow
@pytest.mark.timeout(300)  # ~40 s measured on 2 idle cores; the limit allows for a far busier machine
def test_the_demo_first_sequence_captures_calibrates_trains_predicts_and_scores(tmp_path, monkeypatch):
    tiny = tiny_model()
    copy_specs(DEMO, tmp_path / "runs" / "demo", tiny)
    copy_specs(DEMO_FIRST, tmp_path / "runs" / "demo-first", tiny)
    labelled = list(read_jsonl(DEMO / "demos.jsonl"))  # stands in for the demo run's label_reasons records
    kept = tmp_path / "runs" / "demo" / "out" / "label_reasons" / "kept"
    kept.mkdir(parents=True)
    (kept / "shard-00000.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in labelled))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    # the end of `make demo`: the SFT adapter (the teacher here) and its student's scored prediction
    engine_here("train", "sft", "runs/demo/train.toml")
    engine_here("run", "runs/demo/student.toml", "--quiet")
    engine_here("eval", "runs/demo/student.toml:predict", "--gold", "runs/demo/test_gold.jsonl")

    printed = {}
    for line in recipe("demo-first"):
        if not line.startswith("$(PY) -m engine "):  # the check that `make demo` ran: it did, above
            subprocess.run(line.replace("$(MAKE)", "false"), shell=True, check=True)
            continue
        args = shlex.split(line.removeprefix("$(PY) -m engine "))
        printed[args[0]] = engine_here(*args).stdout
    first = tmp_path / "runs" / "demo-first"
    spec = load_spec(first / "train.toml", command="first")
    fmt = spec.prompt_format()

    # the capture input: the labelled records rendered by the train spec's format, train and held out
    rows = list(read_jsonl(first / "out" / "rows.jsonl"))
    by_id = {r["id"]: r for r in labelled}
    assert sorted(r["id"] for r in rows) == sorted(by_id) and {r["split"] for r in rows} == {
        "train",
        "validation",
    }
    for row in rows:
        assert row["prompt"] == fmt.messages(by_id[row["id"]], "joint")
        assert row["completion"] == fmt.example(by_id[row["id"]], "joint")["completion"]
    store = TopKReader(first / "out" / "capture" / "teacher_topk" / "topk")
    assert sorted(store.keys()) == sorted(by_id)
    assert "chosen" in printed["distill"] and store.manifest["calibration"]["val_records"] == len(rows)

    # FIRST trained on exactly the captured ids, scored every checkpoint on the held-out records, and
    # saved the format it was trained on
    out = first / "out" / "first"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "first" and summary["records"] == {"train": 4, "validation": 2}
    assert summary["alignment"]["distilled_share"] == 1 and summary["alignment"]["prompt_mismatches"] == 0
    best = summary["evaluation"]["best"]
    assert {"eval_first_kl", "eval_top1_agreement", "eval_ece"} <= set(best) and best["eval_tokens"] > 0
    assert orjson.loads((out / "prompt_format.json").read_bytes()) == fmt.to_dict(["joint"])

    # the student is asked as it was trained: format_from renders the training messages
    student = load_run_spec(first / "student.toml").generators["predict"]
    for record in labelled:
        question = {"id": record["id"], "feature_content": record["feature_content"]}
        assert student.messages(question, "joint") == next(
            r["prompt"] for r in rows if r["id"] == record["id"]
        )
    predicted = outcomes(first / "out" / "student", "predict", "kept")
    assert sorted(r["id"] for r in predicted) == ["p1", "p2"]
    assert all(str(out) in r["meta"]["model"] for r in predicted)  # the FIRST adapter answered
    assert (
        "diseases.f1" in printed["eval"] and (first / "out" / "student" / "predict" / "eval.json").is_file()
    )

    # `engine runs`: the FIRST student's scored run beside the SFT student's, the store no run of its own
    runs = {r["name"]: r for r in orjson.loads(engine_here("runs", "--json").stdout)}
    assert set(runs) == {"demo-student", "demo-first-capture", "demo-first-student"}
    assert "diseases.f1" in runs["demo-student"] and "diseases.f1" in runs["demo-first-student"]
    assert runs["demo-first-capture"]["scored_tokens"] == sum(store.rows(k) for k in store.keys())
    assert "demo-first-student" in printed["runs"] and "demo-student" in printed["runs"]
