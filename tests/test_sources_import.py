"""`python -m engine import`: one small nested fixture read as JSON, JSONL, CSV, Parquet and a saved
dataset folder gives the same records; rows that cannot be mapped are listed by index with a reason."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from engine.errors import SpecError
from sources.importer import import_dataset
from sources.mapping import load_mapping
from tests.engine_helpers import ROOT, engine, read_lines

FIXTURE = ROOT / "tests" / "data" / "sources_cases.json"
ZMDO_MAP = ROOT / "sources" / "mappings" / "zmdo.toml"
REAL = ROOT.parent / "shared" / "data" / "zmdo-medical-data-cleaning" / "cases.json"


def _cases() -> list[dict]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def _write_csv(path: Path) -> None:
    """Flat columns named by their field paths; lists as text (diseases `A；B`, reasons one per line)."""
    rows = []
    for case in _cases():
        row = {f"condition.{k}": ("" if v is None else v) for k, v in case["condition"].items()}
        row["diseases"] = "；".join(case["diseases"])
        row["diagnoses[].reason"] = "\n".join(d["reason"] for d in case["diagnoses"])
        rows.append(row)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _write(kind: str, folder: Path) -> Path:
    import datasets

    if kind == "json":
        return FIXTURE
    if kind == "csv":
        _write_csv(folder / "cases.csv")
        return folder / "cases.csv"
    if kind == "jsonl":
        path = folder / "cases.jsonl"
        path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in _cases()), encoding="utf-8")
        return path
    data = datasets.Dataset.from_list(_cases())
    if kind == "parquet":
        data.to_parquet(str(folder / "cases.parquet"))
        return folder / "cases.parquet"
    data.save_to_disk(str(folder / "saved"))
    return folder / "saved"


EXPECTED_FIRST = (
    "性别: 男\n年龄: 49\n主诉: 右下腹痛3小时\n现病史: 3小时前出现右下腹疼痛，可触及包块。\n既往史: \n"
    "个人史: 吸烟20年\n过敏史: \n婚育史: \n流行病史: \n体格检查: T 37.8℃，右下腹压痛\n辅助检查: WBC 5.0×10⁹/L"
)


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv", "parquet", "saved"])
def test_every_format_maps_to_the_same_records(tmp_path: Path, kind: str) -> None:
    source = _write(kind, tmp_path)
    out = tmp_path / "records.jsonl"
    report = import_dataset(source, out, load_mapping(ZMDO_MAP), quiet=True)
    assert (report.rows, report.written) == (5, 3)
    records = read_lines(out)
    assert [r["id"] for r in records] == ["zmdo-0000", "zmdo-0001", "zmdo-0004"]
    assert records[0]["feature_content"] == EXPECTED_FIRST
    assert records[0]["diseases"] == ["嵌顿性腹股沟斜疝", "肠梗阻"]
    assert records[0]["reason"] == ["右下腹包块伴压痛", "X线见液气平"]
    assert "\n婚育史: 已婚；G1P0\n" in records[1]["feature_content"]  # two source fields on one line
    assert records[2]["reason"] == ["进食海鲜后出现风团", "既往海鲜过敏"]
    assert {r["source"] for r in records} == {"zmdo"}


def test_unmappable_rows_are_listed_by_index_with_a_reason(tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    proc = engine("import", FIXTURE, "-o", out, "--map", ZMDO_MAP, "--quiet")
    errors = read_lines(tmp_path / "records.errors.jsonl")
    assert errors == [
        {"index": 2, "reason": "required line 主诉 is empty"},
        {"index": 3, "reason": "diseases field 'diseases' is empty"},
    ]
    assert "imported 3 of 5 rows" in proc.stderr
    assert "2 could not be mapped" in proc.stderr and "records.errors.jsonl" in proc.stderr
    assert len(read_lines(out)) == 3


def test_duplicate_ids_and_an_id_field(tmp_path: Path) -> None:
    rows = [{"cid": "a", "cc": "咳嗽"}, {"cid": "b", "cc": "发热"}, {"cid": "a", "cc": "头痛"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "m.toml").write_text('id = "cid"\n[[lines]]\nlabel = "主诉"\nfield = "cc"\n')
    report = import_dataset(tmp_path / "rows.jsonl", tmp_path / "o.jsonl", load_mapping(tmp_path / "m.toml"))
    assert [r["feature_content"] for r in read_lines(tmp_path / "o.jsonl")] == ["主诉: 咳嗽", "主诉: 发热"]
    assert read_lines(tmp_path / "o.errors.jsonl") == [{"index": 2, "reason": "duplicate id 'a'"}]
    assert report.errors == {"duplicate id": 1}


def test_bad_mappings_fail_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[lines]]\nlabel = "主诉"\nfield = "cc"\nextra = 1\n')
    with pytest.raises(
        SpecError, match=r"bad.toml:4: lines\[0\].extra: unknown key \(known: label, field, fields\)$"
    ):
        load_mapping(bad)
    bad.write_text('required = ["年龄"]\n[[lines]]\nlabel = "主诉"\nfield = "cc"\n')
    with pytest.raises(
        SpecError, match=r"bad.toml: required labels \['年龄'\] are not among the lines' labels$"
    ):
        load_mapping(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text('[[lines]]\nlabel = "主诉"\nfield = "condition.chiefComplain"\n')
    proc = engine("import", FIXTURE, "-o", tmp_path / "o.jsonl", "--map", typo, check=False)
    assert proc.returncode == 2
    assert "field 'condition.chiefComplain' of the mapping is not in the dataset" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()
    proc = engine("import", tmp_path / "nothing.csv", "-o", tmp_path / "o.jsonl", "--map", typo, check=False)
    assert proc.returncode == 2 and "no such file" in proc.stderr


@pytest.mark.skipif(not REAL.exists(), reason="../shared/data/zmdo-medical-data-cleaning/cases.json absent")
def test_real_zmdo_cases(tmp_path: Path) -> None:
    report = import_dataset(REAL, tmp_path / "zmdo.jsonl", load_mapping(ZMDO_MAP), quiet=True)
    assert report.rows == 1037
    assert report.written + sum(report.errors.values()) == report.rows
    assert report.written > 1000
    first = read_lines(tmp_path / "zmdo.jsonl")[0]
    assert first["feature_content"].splitlines()[2].startswith("主诉: ")
