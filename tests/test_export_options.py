"""Submission formatting variants: `engine export --format submission --set KEY=VALUE` round-trips."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from engine.errors import SpecError
from engine.overrides import parse_overrides
from evals.submission import export_submission, read_submission
from tests.engine_helpers import engine, write_spec

RECORDS = [
    {
        "id": 7,
        "feature_content": "性别: 女\n年龄: 30",
        "diseases": ["高血压", "糖尿病"],
        "reason": ["血压高", "血糖高"],
    },
    {"id": 8, "feature_content": "性别: 男\n年龄: 40", "diseases": ["发热"], "reason": ["体温38.5℃"]},
]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"reason_separator": "newline"},
        {"disease_numbering": False},
        {"disease_separator": "|", "disease_numbering": False},
    ],
)
def test_variants_round_trip(tmp_path: Path, options: dict) -> None:
    out = io.BytesIO()
    assert export_submission(RECORDS, out, **options) == 2
    path = tmp_path / "submission.jsonl"
    path.write_bytes(out.getvalue())
    back = read_submission(path)
    assert [(r["id"], r["diseases"], r["reason"]) for r in back] == [
        (r["id"], r["diseases"], r["reason"]) for r in RECORDS
    ]


def test_variants_change_the_bytes() -> None:
    default, newline, plain = io.BytesIO(), io.BytesIO(), io.BytesIO()
    export_submission(RECORDS, default)
    export_submission(RECORDS, newline, reason_separator="newline")
    export_submission(RECORDS, plain, disease_numbering=False)
    text = default.getvalue().decode()
    assert "1. 高血压；2. 糖尿病" in text and "1. 血压高；\\\\n2. 血糖高。" in text
    assert "1. 血压高；\\n2. 血糖高。" in newline.getvalue().decode()
    assert '"diseases":"高血压；糖尿病"' in plain.getvalue().decode()


def test_options_parse_literals_and_reject_unknown_keys() -> None:
    assert parse_overrides(["disease_numbering=false", "point_end=;", 'last_point_end="."']) == {
        "disease_numbering": False,
        "point_end": ";",
        "last_point_end": ".",
    }
    with pytest.raises(SpecError, match=r"^--set bogus: bogus: unknown key \(known: reason_separator, "):
        export_submission(RECORDS, io.BytesIO(), bogus=1)


def test_jsonl_export_takes_no_options(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=2)
    engine("run", spec, "--quiet")
    proc = engine("export", spec, "--stage", "answer", "--set", "x=1", check=False)
    assert proc.returncode == 2 and "takes no --set options" in proc.stderr


def test_dotted_overrides_build_nested_tables_and_refuse_a_scalar_parent() -> None:
    from engine.overrides import apply_override, parse_override

    raw: dict = {"lora": {"r": 16}, "seed": 1}
    apply_override(raw, *parse_override("lora.r=8"))
    apply_override(raw, *parse_override("sft.output_dir=out/try"))
    assert raw == {"lora": {"r": 8}, "seed": 1, "sft": {"output_dir": "out/try"}}
    with pytest.raises(SpecError, match="'seed' is not a table"):
        apply_override(raw, *parse_override("seed.x=1"))
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        parse_override("max_steps")
