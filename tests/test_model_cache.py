"""One model cache for generation and training ($ENGINE_CACHE_DIR, else ~/.cache/distill-engine; a spec
may override it), and local file paths in provider tables resolved from the spec's folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.model_cache import model_cache_dir
from engine.spec import load_spec
from tests.engine_helpers import write_cases

SPEC = """
[run]
name = "t"
{run}

[providers.student]
kind = "local"
model = "{model}"
adapter = "{adapter}"

[providers.teacher]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "m"
tokenizer = "tokenizer"

[[stages]]
name = "answer"
generator = "template"
provider = "student"
input = "cases.jsonl"
prompt = "{{question}}"
"""


def spec_in(folder: Path, run: str = "", model: str = "", adapter: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_cases(folder / "cases.jsonl", 1)
    path = folder / "spec.toml"
    path.write_text(SPEC.format(run=run, model=model, adapter=adapter))
    return path


def test_the_cache_is_the_variable_else_the_home_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ENGINE_CACHE_DIR", raising=False)
    assert model_cache_dir() == Path.home() / ".cache" / "distill-engine"
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path / "models-here"))
    assert model_cache_dir() == tmp_path / "models-here"
    assert load_spec(spec_in(tmp_path / "a")).cache_dir == tmp_path / "models-here"  # not beside the spec
    own = load_spec(spec_in(tmp_path / "b", run='cache = "my-cache"'))
    assert own.cache_dir == (tmp_path / "b" / "my-cache").resolve()


def test_generation_and_training_find_the_bundled_model_in_the_same_folder(
    monkeypatch, tmp_path: Path
) -> None:
    from engine.providers import local_model
    from trainers.base_model import resolve_base_model

    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path / "cache"))
    # a finished conversion (its marker written last) is reused as it is: no model is loaded here
    converted = local_model.converted_dir(local_model.bundled_gguf(), None)
    converted.mkdir(parents=True)
    (converted / local_model.DONE_MARKER).write_text("{}")
    assert converted.parent == tmp_path / "cache" / "models"
    loaded = load_spec(spec_in(tmp_path / "run"))
    assert local_model.resolve_model("", loaded.cache_dir) == converted  # what the local provider loads
    assert resolve_base_model("") == converted  # what `engine train` loads


def test_provider_paths_resolve_from_the_spec_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # the working directory is not the spec's folder
    folder = tmp_path / "runs" / "v7"
    loaded = load_spec(spec_in(folder, model="../base/model.gguf", adapter="adapters/sft"))
    student = loaded.provider_configs["student"]
    assert student.adapter == str(folder / "adapters" / "sft")
    assert student.model == str(tmp_path / "runs" / "base" / "model.gguf")
    assert loaded.provider_configs["teacher"].tokenizer == str(folder / "tokenizer")


@pytest.mark.parametrize("adapter", ["/abs/adapter", "~/adapter"])
def test_absolute_and_home_paths_stay_where_they_point(tmp_path: Path, adapter: str) -> None:
    loaded = load_spec(spec_in(tmp_path, adapter=adapter))
    assert loaded.provider_configs["student"].adapter == os.path.expanduser(adapter)
    assert loaded.provider_configs["student"].model == ""  # "" still means the bundled model


def test_copies_of_one_gguf_share_a_conversion_and_a_changed_file_does_not(tmp_path: Path) -> None:
    from engine.providers import local_model

    # every venv installs its own copy of the bundled GGUF: the conversion is keyed on content, not path
    a, b = tmp_path / "venv-a" / "m.gguf", tmp_path / "venv-b" / "m.gguf"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(b"GGUF" + bytes(range(256)) * 9000)
    assert local_model.converted_dir(a, tmp_path) == local_model.converted_dir(b, tmp_path)
    b.write_bytes(b"GGUF" + bytes(range(256)) * 9001)
    assert local_model.converted_dir(a, tmp_path) != local_model.converted_dir(b, tmp_path)
