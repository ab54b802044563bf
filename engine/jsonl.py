"""Reading JSONL, the one way: a record per non-blank line, and one clear error naming the file and the
line for a line that is not a JSON object. (`write_jsonl` writes records the same way round.)

`numbered_jsonl` / `read_jsonl` read a whole file. `jsonl_lines` walks an open file (from where it stands)
for readers that need more than the records: byte offsets (journals, indexes, ledgers), several files
open at once, their own advice in the error. What a last line without its newline means is the
caller's choice (`tail`):
  "error"  it is read like any other line (a file that is written whole, then read);
  "skip"   it is skipped when it does not parse (a write cut short by a crash);
  "wait"   it is never read (an append-only file another process may be writing right now).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

import orjson

from engine.errors import SpecError

Tail = Literal["error", "skip", "wait"]
FIX = "fix or remove that line"


def parse_line(path: str | Path, number: int, line: bytes, advice: str = FIX) -> dict[str, Any]:
    """The JSON object on line `number` of `path`; SpecError `path:number: ...; advice` otherwise."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        problem = f"not valid JSON ({exc})"
    else:
        if isinstance(record, dict):
            return record
        problem = f"expected a JSON object, got {type(record).__name__}"
    raise SpecError(f"{path}:{number}: {problem}; {advice}")


class Line(NamedTuple):
    number: int  # 1 for the file's first line
    offset: int  # where the line starts in the file
    raw: bytes  # the line as stored, newline included
    record: dict[str, Any]


def jsonl_lines(
    handle: IO[bytes],
    path: str | Path | None = None,
    *,
    tail: Tail = "error",
    advice: str = FIX,
    start: tuple[int, int] = (1, 0),
) -> Iterator[Line]:
    """Every non-blank line of an open binary file, read from where it stands; `start` is (the number,
    the offset) of the line there."""
    where = path if path is not None else handle.name
    first, offset = start
    for number, line in enumerate(handle, first):
        if not line.endswith(b"\n") and (tail == "wait" or (tail == "skip" and not _parses(line))):
            return
        if line.strip():
            yield Line(number, offset, line, parse_line(where, number, line, advice))
        offset += len(line)


def _parses(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def numbered_jsonl(path: str | Path, *, tail: Tail = "error") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line of a JSONL file; a file that cannot be opened or a
    bad line raises one clear SpecError naming the file (and line)."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise SpecError(f"{path}: cannot open ({exc.strerror}); check the path") from None
    with handle:
        for line in jsonl_lines(handle, path, tail=tail):
            yield line.number, line.record


def read_jsonl(path: str | Path, *, tail: Tail = "error") -> Iterator[dict[str, Any]]:
    """Stream the records of a JSONL file (errors as in `numbered_jsonl`)."""
    for _, record in numbered_jsonl(path, tail=tail):
        yield record


def write_jsonl(records: Iterable[dict[str, Any]], out: IO[bytes]) -> int:
    """One JSON line per record into a binary file (with engine/atomic.py `atomic_output` for a file that
    appears whole); returns how many. Also `engine export --format jsonl`."""
    count = 0
    for record in records:
        out.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        count += 1
    return count
