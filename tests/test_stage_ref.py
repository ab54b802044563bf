"""engine/stage_ref.py, the one `spec.toml:STAGE` resolver (`engine eval`, `engine demos`, a train spec's
sources): a stage's kept records, of the spec's own run or a named one, with one-line errors that say
which stages there are and what to run."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import SpecError
from engine.spec import load_spec
from engine.stage_ref import resolve_stage, split_stage_ref
from tests.engine_helpers import engine, write_spec
from tests.test_pipeline import CHAINED


def test_split() -> None:
    assert split_stage_ref("runs/x/spec.toml:predict") == ("runs/x/spec.toml", "predict")
    assert split_stage_ref("/abs/spec.toml:a.b") == ("/abs/spec.toml", "a.b")
    for plain in ("answers.jsonl", "data/*.jsonl", "spec.toml", "spec.toml:", "C:answers.jsonl"):
        assert split_stage_ref(plain) is None


def test_kept_records_of_the_spec_and_of_a_named_run(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=3, stages=CHAINED)
    engine("run", spec, "--quiet")
    engine("run", spec, "--set", "stages.first.limit=2", "--as", "v2", "--quiet")
    stage = resolve_stage(f"{spec}:first")
    assert stage.folder == tmp_path / "out" / "first"
    assert len(list(stage.records())) == 3 and [p.name for p in stage.kept_files()] == ["shard-00000.jsonl"]
    named = resolve_stage(f"{spec}:first", "v2")
    assert named.folder == tmp_path / "out-v2" / "first" and len(list(named.records())) == 2


def test_errors_name_the_stages_and_what_to_run(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", cases=2, stages=CHAINED)
    assert resolve_stage(str(tmp_path / "cases.jsonl")) is None  # a plain file is the caller's
    plain = r"^--as v2: give the records as SPEC:STAGE \(e.g. runs/x/spec.toml:predict\)$"
    with pytest.raises(SpecError, match=plain):
        resolve_stage(str(tmp_path / "cases.jsonl"), "v2")
    with pytest.raises(SpecError, match=rf"^{spec}: no stage named 'firts' \(stages: first, second\)$"):
        resolve_stage(f"{spec}:firts")
    not_run = rf"^{tmp_path}/out/first: no kept records yet; run `python -m engine run {spec}` first$"
    with pytest.raises(SpecError, match=not_run):
        resolve_stage(f"{spec}:first")
    with pytest.raises(SpecError, match=rf"{spec}: no run named 'v9' .*; run `engine run {spec} --as v9`$"):
        resolve_stage(f"{spec}:first", "v9")
    with pytest.raises(SpecError, match=r"absent.toml: cannot read spec"):
        resolve_stage(f"{tmp_path / 'absent.toml'}:answer")


def test_a_stage_reads_even_when_a_later_stage_cannot_be_built(tmp_path: Path, fake_server) -> None:
    """Nothing is built: a stage whose prompt file is not written yet does not stop reading another."""
    spec = write_spec(tmp_path, fake_server.url, cases=2, stages=CHAINED)
    engine("run", spec, "--quiet")
    text = spec.read_text().replace('prompt = "Check: {answer}"', 'prompt_file = "not-yet.txt"')
    spec.write_text(text)
    with pytest.raises(SpecError, match="not-yet.txt"):
        load_spec(spec)  # what `engine run` does: every stage built
    assert len(list(resolve_stage(f"{spec}:first").records())) == 2
