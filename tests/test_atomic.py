"""engine/atomic.py, the one atomic writer: a file or folder appears whole or not at all. A process killed
mid-write (a real SIGKILL) or a write that fails leaves the old version as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from engine.atomic import AtomicFile, atomic_folder, atomic_output, write_json_atomic
from tests.engine_helpers import ROOT

WRITER = """
import sys, time
from pathlib import Path
from engine.atomic import atomic_output
with atomic_output(Path(sys.argv[1])) as out:
    out.write(b"new, but only half of it")
    out.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_bytes(b"old")
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline() == "writing\n"
        partial = [p for p in tmp_path.iterdir() if p.name.startswith(".report.json.tmp")]
        assert [p.read_bytes() for p in partial] == [b"new, but only half of it"]  # the new text is out there
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert target.read_bytes() == b"old"


def test_a_failing_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a.jsonl"
    target.write_bytes(b"old\n")
    with pytest.raises(ValueError, match="bad record"), atomic_output(target) as out:
        out.write(b"new\n")
        raise ValueError("bad record")
    assert target.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_a_finished_write_is_on_disk_before_it_is_renamed_in(tmp_path: Path, monkeypatch) -> None:
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_json_atomic(tmp_path / "sub" / "m.json", {"a": 1})  # the folder is made on the way
    assert events == ["fsync", "replace"]
    assert orjson.loads((tmp_path / "sub" / "m.json").read_bytes()) == {"a": 1}
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["m.json"]


def test_files_swapped_in_together_by_their_caller(tmp_path: Path) -> None:
    a, b = AtomicFile(tmp_path / "a.jsonl", only_writer=True), AtomicFile(tmp_path / "b.jsonl")
    a.write(b"A\n")
    b.write(b"B\n")
    a.finish()
    b.finish()
    assert not (tmp_path / "a.jsonl").exists()  # on disk, not in place yet
    a.publish()
    assert (tmp_path / "a.jsonl").read_bytes() == b"A\n" and not (tmp_path / "b.jsonl").exists()
    b.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]
    again = AtomicFile(tmp_path / "a.jsonl", only_writer=True)  # the same temp name: nothing piles up
    assert again.tmp == a.tmp
    again.abort()


def test_a_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_folder(dest) as staging:
        (staging / "config.json").write_text("{}")
        raise RuntimeError("conversion failed")
    assert list(tmp_path.iterdir()) == []
    dest.mkdir()
    (dest / "stale.bin").write_text("x")
    with atomic_folder(dest) as staging:  # "replace": the caller decided the old folder may go
        (staging / "config.json").write_text("{}")
    assert sorted(p.name for p in dest.iterdir()) == ["config.json"]
    with atomic_folder(dest, existing="keep") as staging:  # another process made it first: it stays
        (staging / "other.json").write_text("{}")
    assert sorted(p.name for p in dest.iterdir()) == ["config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
