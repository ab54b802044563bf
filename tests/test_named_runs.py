"""`engine run SPEC --set KEY=VALUE --as NAME`: a version of a spec is a command line. The named run writes
its own folder, shows up in `engine runs` under its name with its overrides, and `status`, `export`,
`filter` and `eval SPEC:STAGE` reach it with `--as NAME`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine.errors import SpecError
from engine.spec import load_spec
from tests.engine_helpers import ANSWER_STAGE, engine, outcomes, read_lines, write_spec

# the template writes its answer to `reason`, so `engine eval` can read it (the server echoes the prompt)
STAGES = ANSWER_STAGE + 'output = "reason"\n'


def test_named_run_end_to_end(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=4, stages=STAGES)
    engine("run", spec, "--quiet")
    v2 = [
        "--set",
        'stages.answer.prompt="Longer: {question}"',
        "--set",
        "stages.answer.limit=3",
        "--as",
        "v2",
    ]
    engine("run", spec, *v2, "--quiet")
    assert asked(fake_server, "Longer: ") == 3

    folder = tmp_path / "out-v2"  # beside the spec's `out`
    kept = outcomes(folder, "answer", "kept")
    assert len(kept) == 3 and all(r["reason"].startswith("Longer: ") for r in kept)
    assert len(outcomes(tmp_path / "out", "answer", "kept")) == 4  # the spec's own run is untouched
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    assert manifest["name"] == "v2"
    assert manifest["overrides"] == ['stages.answer.prompt="Longer: {question}"', "stages.answer.limit=3"]

    rows = orjson.loads(engine("runs", tmp_path, "--only", "v*", "--json").stdout)
    assert [r["name"] for r in rows] == ["v2"]
    assert rows[0]["overrides"] == ['stages.answer.prompt="Longer: {question}"', "stages.answer.limit=3"]
    assert rows[0]["kept"] == 3
    assert "answer.limit=3" in engine("runs", tmp_path, "--only", "v*").stdout.splitlines()[1]

    # the same run through the other commands
    status = orjson.loads(engine("status", spec, "--as", "v2", "--json").stdout)
    assert status["name"] == "v2" and status["stages"]["answer"]["counts"]["kept"] == 3
    assert orjson.loads(engine("status", spec, "--json").stdout)["stages"]["answer"]["counts"]["kept"] == 4
    exported = tmp_path / "v2.jsonl"
    engine("export", spec, "--stage", "answer", "--as", "v2", "-o", exported)
    assert [r["reason"][:8] for r in read_lines(exported)] == ["Longer: "] * 3
    assert "answer" in engine("filter", spec, "--as", "v2").stdout
    engine("eval", f"{spec}:answer", "--as", "v2", "--json")
    assert (folder / "answer" / "eval.json").is_file()
    assert not (tmp_path / "out" / "answer" / "eval.json").exists()

    # `--as v2` alone resumes with the recorded overrides: nothing left to request
    engine("run", spec, "--as", "v2", "--quiet")
    assert asked(fake_server, "Longer: ") == 3
    assert len(outcomes(folder, "answer", "kept")) == 3


def test_named_run_refusals(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=2)
    engine("run", spec, "--set", "stages.answer.limit=1", "--as", "v2", "--quiet")

    changed = engine("run", spec, "--set", "stages.answer.limit=2", "--as", "v2", check=False)
    assert changed.returncode == 2
    assert "this run was started with --set stages.answer.limit=1" in changed.stderr

    unnamed = engine("run", spec, "--set", "stages.answer.limit=2", check=False)
    assert unnamed.returncode == 2 and "need a run name (`--as NAME`)" in unnamed.stderr

    missing = engine("status", spec, "--as", "v9", check=False)
    assert missing.returncode == 2 and "no run named 'v9'" in missing.stderr

    renamed = engine("run", spec, "--set", "run.out=elsewhere", "--as", "v3", check=False)
    assert renamed.returncode == 2 and "come from --as v3" in renamed.stderr
    assert sorted(p.name for p in tmp_path.glob("out*")) == ["out-v2"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            "stages.answer.promt=x",
            "--set stages.answer.promt=x: stages[0].promt: unknown key (did you mean 'prompt'?)",
        ),
        (
            "stages.answr.prompt=x",
            "--set stages.answr.prompt: stages has no table named 'answr' (names: answer)",
        ),
        ("run.seed=abc", "--set run.seed=abc: run.seed: Input should be a valid integer"),
        ("runn.seed=1", "--set runn.seed=1: runn: unknown key (did you mean 'run'?)"),
        (
            "providers.teacher.rpm=fast",
            "--set providers.teacher.rpm=fast: providers.teacher.rpm: Input should be",
        ),
        (
            "stages.answer.input=nope.jsonl",
            "--set stages.answer.input=nope.jsonl: stages[0].input: input 'nope",
        ),
    ],
)
def test_a_bad_override_is_one_line_naming_the_set(tmp_path: Path, item: str, message: str) -> None:
    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", cases=2)
    with pytest.raises(SpecError) as caught:
        load_spec(spec, [item])
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_a_bad_override_on_the_command_line_records_nothing(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", cases=2)
    proc = engine("run", spec, "--set", "stages.answer.promt=x", "--as", "v3", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: --set stages.answer.promt=x: stages[0].promt: unknown key (did you mean 'prompt'?)"
    )
    assert not (tmp_path / "out-v3").exists()


def test_overrides_reach_stages_by_name_or_index_and_change_the_hash(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", cases=2)
    plain = load_spec(spec)
    by_name = load_spec(spec, ["stages.answer.samples=3", "providers.teacher.params={temperature = 0.5}"])
    by_index = load_spec(spec, ["stages.0.samples=3", "providers.teacher.params={temperature = 0.5}"])
    assert by_name.spec.stages[0].samples == by_index.spec.stages[0].samples == 3
    assert by_name.provider_configs["teacher"].params == {"temperature": 0.5}
    assert plain.hash != by_name.hash
    assert by_name.overrides == ("stages.answer.samples=3", "providers.teacher.params={temperature = 0.5}")


def asked(server, text: str) -> int:
    """Requests whose messages contain `text` (a preflight request does not count)."""
    return sum(text in orjson.dumps(body.get("messages")).decode() for body in server.bodies)
