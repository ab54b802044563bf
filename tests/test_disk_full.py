"""A journal line is written whole or not at all: real short writes (RLIMIT_FSIZE) and a real full disk
(a small tmpfs) stop the run with one line naming the folder, leave no half line and no temp file,
and the same command resumes once there is space again."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.engine_helpers import ROOT, assert_exactly_once, engine_here, outcomes, write_spec

N = 40


def run_limited(spec: Path, max_file_bytes: int) -> subprocess.CompletedProcess:
    """`engine run` whose files cannot grow past `max_file_bytes`: the write crossing it is cut short,
    the next one fails with EFBIG (SIGXFSZ ignored, as a real process under a quota would see it)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    env = {**os.environ, "TEST_ENGINE_KEY": "k"}
    cmd = [sys.executable, "-m", "engine", "run", str(spec), "--quiet"]
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, preexec_fn=limit
    )


def assert_stopped_cleanly(proc: subprocess.CompletedProcess, out: Path) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"stopped: disk full writing {out}") and "run the same command" in lines[0]
    journal = out / "answer" / "raw" / "shard-00000.jsonl"
    data = journal.read_bytes()
    assert data.endswith(b"\n") and 0 < data.count(b"\n") < N
    assert all(orjson.loads(line)["key"] for line in data.splitlines())  # whole lines only
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_a_short_write_then_efbig_stops_the_run_and_it_resumes(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=N, concurrency=2)
    proc = run_limited(spec, 4000)  # a journal line is ~400 bytes: the tenth or so crosses the limit
    assert_stopped_cleanly(proc, tmp_path / "out")
    status = engine_here("status", spec)  # every later command reads the journal fine
    assert "Traceback" not in status.stderr
    engine_here("run", spec, "--quiet")
    assert sorted(r["id"] for r in outcomes(tmp_path / "out", "answer", "kept")) == [
        f"c{i:04d}" for i in range(N)
    ]
    assert_exactly_once(tmp_path / "out", "answer")


@pytest.fixture
def small_disk(tmp_path: Path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(disk)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here ({mount.stderr.decode().strip()}): needs root + CAP_SYS_ADMIN"
        )
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes(
    tmp_path: Path, fake_server, small_disk
) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=N, concurrency=2)
    spec.write_text(spec.read_text().replace('out = "out"', 'out = "disk/out"'))
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * (128 - 20) * 1024)  # 20 KB left: the run needs about 25
    proc = engine_here("run", spec, "--quiet", check=False)
    assert_stopped_cleanly(proc, small_disk / "out")
    filler.unlink()
    engine_here("run", spec, "--quiet")
    kept = outcomes(small_disk / "out", "answer", "kept")
    assert sorted(r["id"] for r in kept) == [f"c{i:04d}" for i in range(N)]
    assert_exactly_once(small_disk / "out", "answer")
