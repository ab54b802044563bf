"""engine/jsonl.py, the one JSONL reader: every bad line is one error naming the file and the line, and
a last line without its newline is read, skipped or left alone as the caller says."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from engine.errors import SpecError
from engine.jsonl import jsonl_lines, numbered_jsonl, read_jsonl, write_jsonl


def test_records_come_with_their_line_numbers_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": 1}\n\n  \n{"id": 2}\n')
    assert list(numbered_jsonl(path)) == [(1, {"id": 1}), (4, {"id": 2})]
    assert list(read_jsonl(path)) == [{"id": 1}, {"id": 2}]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"id": 2,}', r"^{path}:2: not valid JSON \(.*\); fix or remove that line$"),
        (b"[1, 2]", r"^{path}:2: expected a JSON object, got list; fix or remove that line$"),
        (b'"text"', r"^{path}:2: expected a JSON object, got str; fix or remove that line$"),
    ],
)
def test_a_bad_line_is_one_error_naming_file_and_line(tmp_path: Path, line: bytes, expected: str) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": 1}\n' + line + b'\n{"id": 3}\n')
    with pytest.raises(SpecError, match=expected.format(path=path)):
        list(read_jsonl(path))


def test_a_missing_file_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"absent.jsonl: cannot open \(No such file or directory\); check"):
        list(read_jsonl(tmp_path / "absent.jsonl"))


def test_a_torn_last_line_is_an_error_skipped_or_left_for_its_writer(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": 1}\n{"id": 2}\n{"id": 3, "te')
    with pytest.raises(SpecError, match=r"a.jsonl:3: not valid JSON"):
        list(read_jsonl(path))
    assert [r["id"] for r in read_jsonl(path, tail="skip")] == [1, 2]
    assert [r["id"] for r in read_jsonl(path, tail="wait")] == [1, 2]
    # a last line that is whole but for its newline: read when skipping torn lines, not when waiting
    path.write_bytes(b'{"id": 1}\n{"id": 2}')
    assert [r["id"] for r in read_jsonl(path, tail="skip")] == [1, 2]
    assert [r["id"] for r in read_jsonl(path, tail="wait")] == [1]
    # damage before the last line is never taken for a torn tail
    path.write_bytes(b'{"id": 1\n{"id": 2}\n')
    for tail in ("error", "skip", "wait"):
        with pytest.raises(SpecError, match=r"a.jsonl:1: not valid JSON"):
            list(read_jsonl(path, tail=tail))


def test_lines_carry_offsets_from_where_the_reader_starts(tmp_path: Path) -> None:
    data = b'{"id": 1}\n\n{"id": 22}\n{"id": 3}\n'
    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    with open(path, "rb") as f:
        lines = list(jsonl_lines(f))
    assert [(line.number, line.offset) for line in lines] == [(1, 0), (3, 11), (4, 22)]
    assert all(data[line.offset : line.offset + len(line.raw)] == line.raw for line in lines)
    with open(path, "rb") as f:  # a ledger read on from where it was read up to
        f.seek(11)
        later = list(jsonl_lines(f, start=(3, 11)))
    assert [(line.number, line.offset, line.record["id"]) for line in later] == [(3, 11, 22), (4, 22, 3)]


def test_the_caller_words_the_advice(tmp_path: Path) -> None:
    path = tmp_path / "shard.idx"
    path.write_bytes(b"garbage\n")
    with (
        open(path, "rb") as f,
        pytest.raises(SpecError, match=r"shard.idx:1: not valid JSON .*; re-score it$"),
    ):
        list(jsonl_lines(f, advice="re-score it"))


def test_written_records_read_back(tmp_path: Path) -> None:
    out = io.BytesIO()
    records = [{"id": 1, "text": "发热"}, {"id": 2, "list": [1, 2]}]
    assert write_jsonl(records, out) == 2
    assert [orjson.loads(line) for line in out.getvalue().splitlines()] == records
    path = tmp_path / "a.jsonl"
    path.write_bytes(out.getvalue())
    assert list(read_jsonl(path)) == records
