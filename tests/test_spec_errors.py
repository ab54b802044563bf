"""engine/spec_errors.py, the one formatter of a config error: `where: key.path: message`, where is the
file and line, the `--set` item, the flag, or nothing for a table built in code; the same wording for
every config (a misspelt key gets "did you mean", a wrong value shows what was given)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.spec_errors import SpecErrors, flag_errors


class Lora(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = 8
    alpha: int = 16


class Train(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    threshold: float = Field(0.5, le=1)
    lora: Lora = Lora()

    @field_validator("name")
    @classmethod
    def _short(cls, value: str) -> str:
        if len(value) > 8:
            raise ValueError("a name has at most 8 characters")
        return value


TEXT = 'name = "t"\n\n[lora]\nalpah = 4\n'


def error(data: dict, **kwargs) -> str:
    with pytest.raises(ValidationError) as caught:
        Train.model_validate(data)
    return str(SpecErrors(model=Train, **kwargs).from_validation(caught.value))


def test_a_key_in_a_file_is_named_by_its_line() -> None:
    data = {"name": "t", "lora": {"alpah": 4}}
    assert error(data, path=Path("train.toml"), text=TEXT) == (
        "train.toml:4: lora.alpah: unknown key (did you mean 'alpha'?)"
    )


def test_a_key_set_outside_the_file_is_named_by_where_it_was_set() -> None:
    data = {"name": "t", "lora": {"r": "abc"}}
    given = {("lora", "r"): "--set lora.r=abc"}
    assert error(data, path=Path("train.toml"), text=TEXT, given=given) == (
        "--set lora.r=abc: lora.r: Input should be a valid integer, unable to parse string as an integer "
        "(got 'abc')"
    )


def test_a_table_built_in_code_has_no_where() -> None:
    assert error({"name": "t", "threshold": 2}) == (
        "threshold: Input should be less than or equal to 1 (got 2)"
    )
    assert error({}) == "name: required key is missing"
    assert error({"name": "t", "bogus": 1}) == "bogus: unknown key (known: name, threshold, lora)"


def test_a_validator_speaks_for_itself_and_a_long_value_is_cut() -> None:
    long = "x" * 200
    message = error({"name": long})
    assert message.startswith("name: a name has at most 8 characters (got 'xxx")
    assert message.endswith("...)") and len(message) < 140


def test_a_command_option_is_named_by_its_flag() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--name")
    with pytest.raises(ValidationError) as caught:
        Train(name="t", threshold=1.5)
    assert str(flag_errors(parser).from_validation(caught.value)) == (
        "--threshold: threshold: Input should be less than or equal to 1 (got 1.5)"
    )
