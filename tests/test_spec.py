"""A bad spec fails before any request, with one line naming the file, the line and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import SpecError
from engine.spec import load_spec
from tests.engine_helpers import engine, write_spec

GOOD = """[run]
name = "t"

[providers.teacher]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "m"
rpm = 60

[[stages]]
name = "answer"
generator = "template"
provider = "teacher"
input = "cases.jsonl"
prompt = "Q: {question}"
"""


def spec_error(tmp_path: Path, text: str) -> str:
    (tmp_path / "cases.jsonl").write_text('{"id": 1, "question": "why?"}\n')
    path = tmp_path / "spec.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_spec_loads(tmp_path: Path) -> None:
    (tmp_path / "cases.jsonl").write_text('{"id": 1, "question": "why?"}\n')
    (tmp_path / "spec.toml").write_text(GOOD)
    loaded = load_spec(tmp_path / "spec.toml")
    assert loaded.provider_configs["teacher"].rpm == 60
    assert loaded.out_dir == (tmp_path / "out").resolve()


def test_shipped_smoke_spec_is_valid() -> None:
    loaded = load_spec(Path(__file__).parents[1] / "runs" / "smoke" / "spec.toml")
    assert loaded.provider_configs["teacher"].max_concurrency == 32


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('prompt = "Q', 'promt = "Q'),
            "spec.toml:15: stages[0].promt: unknown key (did you mean 'prompt'?)",
        ),
        (("rpm = 60", 'rpm = "fast"'), "spec.toml:8: providers.teacher.rpm: Input should be a valid number"),
        (
            ('provider = "teacher"', 'provider = "techer"'),
            "spec.toml:13: stages[0].provider: unknown provider",
        ),
        (
            ('input = "cases.jsonl"', 'input = "nope.jsonl"'),
            "spec.toml:14: stages[0].input: input 'nope.jsonl'",
        ),
        (
            ("{question}", "{questoin}"),
            "spec.toml:15: stages[0].prompt: stage 'answer': the prompt uses {questoin}",
        ),
        (
            ('generator = "template"', 'generator = "magic"'),
            "spec.toml:12: stages[0].generator: unknown generator",
        ),
        (('kind = "openai"', 'kind = "magic"'), "spec.toml:5: providers.teacher.kind: expected one of"),
        (('name = "t"', 'nam = "t"'), "spec.toml:2: run.nam: unknown key (did you mean 'name'?)"),
        (("[run]", "[run\n"), "invalid TOML"),
        (('name = "answer"', 'name = ".."'), "spec.toml:11: stages[0].name: stage name '..' must be unique"),
        (('name = "answer"', 'name = ".hidden"'), "not start with '.'"),
        (
            ('name = "t"', 'name = "t"\nout = "../elsewhere"'),
            "spec.toml:3: run.out: '../elsewhere' is not a folder",
        ),
        (
            ('name = "t"', 'name = "t"\nout = "/tmp/x"'),
            "spec.toml:3: run.out: '/tmp/x' is not a folder inside",
        ),
        (('name = "t"', 'name = "t"\nout = "."'), "spec.toml:3: run.out: '.' is not a folder inside"),
    ],
)
def test_bad_spec_names_file_line_and_key(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    assert expected in spec_error(tmp_path, GOOD.replace(*change))


def test_unknown_filter_key_is_named(tmp_path: Path) -> None:
    text = GOOD + '\n[[stages.filters]]\nkind = "format"\nbogus = 1\n'
    assert "spec.toml:19: stages[0].filters[0].bogus: unknown key" in spec_error(tmp_path, text)


def test_cli_exits_2_before_any_request(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=3)
    spec.write_text(spec.read_text().replace("{question}", "{missing}"))
    proc = engine("run", spec, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "{missing}" in proc.stderr
    assert fake_server.requests == 0


def test_input_without_ids_is_named(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=3)
    with open(tmp_path / "cases.jsonl", "a") as f:
        f.write('{"question": "no id here"}\n')
    proc = engine("run", spec, "--quiet", check=False)
    assert proc.returncode == 2 and "cases.jsonl:4: record has no 'id'" in proc.stderr


def test_corrupt_input_line_is_named(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=3)
    with open(tmp_path / "cases.jsonl", "a") as f:
        f.write('{"id": "x", "question": \n')
    proc = engine("run", spec, "--quiet", check=False)
    assert proc.returncode == 2 and "cases.jsonl:4: not valid JSON" in proc.stderr
