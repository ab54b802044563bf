"""The method registry: a new training method is one module (tests/echo_method.py) plus one registration
line; the spec, `--set`, the error lines, the CLI and the shared fit path pick it up."""

from __future__ import annotations

import json

import pytest

from engine.errors import SpecError
from tests.train_helpers import FAST, write_spec
from trainers.cli import main as train_main
from trainers.methods import METHODS, Method
from trainers.spec import load_spec, spec_model


@pytest.fixture
def echo(monkeypatch):
    echo_method = Method(
        config="tests.echo_method:EchoConfig",
        train="tests.echo_method:train_echo",
        rows="tests.echo_method:echo_rows",
        help="made up",
    )
    monkeypatch.setitem(METHODS, "echo", echo_method)
    spec_model.cache_clear()
    yield
    spec_model.cache_clear()  # rebuilt without it once the registration is undone


def test_a_registered_method_gets_its_table_checked_like_the_others(echo, tmp_path):
    spec = load_spec(write_spec(tmp_path, "[echo]\nshout = true\nmax_steps = 9\n"), ["max_steps=1"], "echo")
    assert spec.echo.shout is True and spec.echo.output_dir == str(tmp_path.resolve() / "out" / "echo")
    assert spec.trainer_args("echo")["max_steps"] == 1  # a bare --set key went to [echo]
    with pytest.raises(
        SpecError, match=r"train.toml:\d+: echo.shoot: unknown key \(did you mean 'shout'\?\)"
    ):
        load_spec(write_spec(tmp_path, "[echo]\nshoot = true\n"))
    with pytest.raises(SpecError, match=r"train.toml:\d+: echo.shout: Input should be a valid boolean"):
        load_spec(write_spec(tmp_path, "[echo]\nshout = 'loud'\n"))


def test_a_registered_method_trains_through_the_cli_and_the_shared_path(echo, tmp_path, capsys):
    spec = write_spec(tmp_path, "[echo]\nmax_steps = 5\nsave_steps = 1\n" + FAST)
    assert train_main(["echo", str(spec), "--set", "max_steps=1", "--set", "shout=true"]) == 0
    summary = json.loads((tmp_path / "out" / "echo" / "summary.json").read_text())
    assert summary["kind"] == "echo" and summary["shout"] is True and summary["steps"] == 1
    assert (tmp_path / "out" / "echo" / "loss.png").is_file() and "echo: 1 steps" in capsys.readouterr().out
    assert train_main(["echo", str(spec), "--dump-examples", str(tmp_path / "rows.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and rows[0]["id"] == 1 and rows[0]["completion"][0]["role"] == "assistant"


def test_without_the_registration_the_table_is_unknown(tmp_path):
    with pytest.raises(SpecError, match=r"train.toml:\d+: echo: unknown key"):
        load_spec(write_spec(tmp_path, "[echo]\nshout = true\n"))
