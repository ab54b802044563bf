"""`engine filter dedupe|leakage` on JSONL files: outputs, side files, summary line, clear errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import orjson
import pytest

from filters.standalone import add_commands, dedupe_jsonl, main

DATA = Path(__file__).parent / "data"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def cases() -> list[dict]:
    return read_jsonl(DATA / "filters_cases.jsonl")


@pytest.fixture
def stream(tmp_path: Path) -> Path:
    """Cases with two light copies placed after their originals, one before its original's twin."""
    records = cases()
    copy_a = dict(
        records[2], id="copy-c03", feature_content=records[2]["feature_content"].replace("2周", "3周")
    )
    copy_b = dict(records[8], id="copy-c09", feature_content=records[8]["feature_content"] + "，建议复查")
    return write_jsonl(tmp_path / "in.jsonl", [*records[:5], copy_a, *records[5:], copy_b])


def test_dedupe_keeps_input_order_and_writes_dropped_with_their_duplicate(
    stream: Path, tmp_path: Path, capsys
):
    assert main(["dedupe", str(stream), "-o", str(tmp_path / "out.jsonl"), "--threshold", "0.8"]) == 0
    kept = read_jsonl(tmp_path / "out.jsonl")
    dropped = read_jsonl(tmp_path / "out.dropped.jsonl")
    assert [r["id"] for r in kept] == [r["id"] for r in cases()]
    assert [(d["record"]["id"], d["duplicate_of"]) for d in dropped] == [
        ("copy-c03", "c03"),
        ("copy-c09", "c09"),
    ]
    assert all(0.8 < d["score"] <= 1 and d["seed"] is False for d in dropped)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"dedupe {stream}: 14 read, 12 kept") and "2 dropped" in line


def test_dedupe_with_a_seed_pool_and_a_custom_side_file(stream: Path, tmp_path: Path):
    seed = write_jsonl(tmp_path / "seed.jsonl", [dict(cases()[0], id="seed-0")])
    summary = dedupe_jsonl(
        stream,
        tmp_path / "out.jsonl",
        threshold=0.8,
        seed=seed,
        dropped_path=tmp_path / "side.jsonl",
        progress=False,
    )
    side = read_jsonl(tmp_path / "side.jsonl")
    assert summary.kept == 11 and side[0]["duplicate_of"] == "seed-0" and side[0]["seed"] is True


def test_dedupe_on_cores_learns_boilerplate_from_the_input(stream: Path, tmp_path: Path):
    whole = dedupe_jsonl(stream, tmp_path / "whole.jsonl", threshold=0.6, progress=False)
    core = dedupe_jsonl(stream, tmp_path / "core.jsonl", threshold=0.6, core=True, progress=False)
    assert whole.kept < 12 == core.kept  # whole texts lose distinct patients to the shared template
    assert core.stats["core_changed"] == 12 - whole.kept and core.stats["boilerplate_segments"] > 0


def test_corrupt_line_is_one_clear_error_and_nothing_is_overwritten(tmp_path: Path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(cases()[0], ensure_ascii=False) + "\n" + '{"id": "c02", "feature_content": "性别\n'
    )
    out = tmp_path / "out.jsonl"
    out.write_text("earlier output\n")
    assert main(["dedupe", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}:2: not valid JSON") and "\n" not in err
    assert out.read_text() == "earlier output\n" and not (tmp_path / "out.dropped.jsonl").exists()


def test_missing_field_and_bad_option_are_clear_errors(stream: Path, tmp_path: Path, capsys):
    assert main(["dedupe", str(stream), "-o", str(tmp_path / "o.jsonl"), "--field", "text"]) == 2
    assert f"{stream}:1: record id='c01' has no field 'text'" in capsys.readouterr().err
    assert main(["dedupe", str(stream), "-o", str(tmp_path / "o.jsonl"), "--threshold", "1.5"]) == 2
    assert "error: --threshold: threshold: Input should be less than 1 (got 1.5)" in capsys.readouterr().err


def test_leakage_command_with_two_test_files(tmp_path: Path, capsys):
    records = cases()
    test_a = write_jsonl(tmp_path / "a.jsonl", records[:4])
    test_b = write_jsonl(tmp_path / "b.jsonl", records[4:8])
    planted = [dict(records[1], id="leak-1"), dict(records[6], id="leak-6")]
    source = write_jsonl(tmp_path / "in.jsonl", [*records[8:], *planted])
    argv = [
        "leakage",
        str(source),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--test",
        str(test_a),
        "--test",
        str(test_b),
    ]
    assert main(argv) == 0
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["c09", "c10", "c11", "c12"]
    reasons = [d["reason"] for d in read_jsonl(tmp_path / "out.dropped.jsonl")]
    assert reasons[0].startswith("exact copy in") and "a.jsonl" in reasons[0] and "b.jsonl" in reasons[1]
    out = capsys.readouterr().out
    assert "6 read, 4 kept" in out and f"{test_a}: exact copy 1" in out and f"{test_b}: exact copy 1" in out


def test_add_commands_registers_under_any_parser(stream: Path, tmp_path: Path):
    parser = argparse.ArgumentParser(prog="engine")
    filter_commands = parser.add_subparsers(dest="command").add_parser("filter").add_subparsers(dest="which")
    add_commands(filter_commands)
    args = parser.parse_args(
        ["filter", "dedupe", str(stream), "-o", str(tmp_path / "o.jsonl"), "--threshold", "0.8"]
    )
    assert args.func(args) == 0 and len(read_jsonl(tmp_path / "o.jsonl")) == 12
