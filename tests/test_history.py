"""`engine runs`: one row per recorded run with notes and deltas, a plot, and a diff of two runs."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.engine_helpers import engine, write_spec


def two_runs(root: Path, url: str) -> None:
    for name, prompt in (("v1", "Short: {question}"), ("v2", "A much longer prompt for: {question}")):
        folder = root / name
        folder.mkdir(parents=True)
        spec = write_spec(folder, url, cases=4)
        text = spec.read_text().replace('name = "t"', f'name = "{name}"\ndescription = "version {name}"')
        spec.write_text(text.replace("Answer briefly: {question}", prompt))
        engine("run", spec, "--quiet")


def test_runs_table_notes_and_deltas(tmp_path: Path, fake_server) -> None:
    two_runs(tmp_path, fake_server.url)
    # other files named manifest.json under a run (a top-k store's) are no runs
    store = tmp_path / "v1" / "out" / "capture" / "topk"
    store.mkdir(parents=True)
    (store / "manifest.json").write_bytes(orjson.dumps({"format": "topk-shards/2", "k": 5}))
    engine("runs", "note", "v1", "--score", "1765", "--text", "zero-shot", "--dir", tmp_path)
    engine("runs", "note", "v2", "--score", "1799", "--dir", tmp_path)
    rows = orjson.loads(engine("runs", tmp_path, "--json").stdout)
    assert [r["name"] for r in rows] == ["v1", "v2"]  # oldest first
    assert rows[0]["description"] == "version v1" and rows[0]["kept"] == 4
    assert rows[0]["models"] == "openai/test-model"
    assert rows[0]["delta"] is None and rows[1]["delta"] == 34
    assert rows[0]["note"] == "zero-shot"
    text = engine("runs", tmp_path).stdout
    assert "v1" in text.splitlines()[1] and "1765" in text.splitlines()[1]


def test_runs_plot_and_diff(tmp_path: Path, fake_server) -> None:
    two_runs(tmp_path, fake_server.url)
    png = tmp_path / "history.png"
    engine("runs", tmp_path, "--plot", png)
    assert png.read_bytes()[:4] == b"\x89PNG"
    report = orjson.loads(engine("runs", tmp_path, "--diff", "v1", "v2", "--json").stdout)
    assert report["shared"] == 4
    answer = report["fields"]["answer"]
    # "A much longer prompt for: " is 19 characters longer than "Short: ", and the server echoes prompts
    assert answer["changed"] == 4 and answer["mean_length_change"] == 19
    assert "answer: 4 ids changed" in engine("runs", tmp_path, "--diff", "v1", "v2").stdout


def test_note_on_unknown_run_is_a_clear_error(tmp_path: Path) -> None:
    proc = engine("runs", "note", "nope", "--score", "1", "--dir", tmp_path, check=False)
    assert proc.returncode == 2 and "no run named 'nope'" in proc.stderr
