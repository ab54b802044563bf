"""Who may write a run: advisory locks (flock) held for the life of `engine run` / `engine filter`.

    <out>/locks/run.lock          shared by sharded runs; exclusive for a plain run and for `filter`
    <out>/locks/width-N.lock      shared by the runs of `--shard I/N`; runs with another N are refused
    <out>/locks/shard-0000I.lock  exclusive: one process per shard

So the runs of one `--shard I/N` split (different I, same N) work side by side on disjoint keys;
anything else that writes the run is refused at once with one line naming the holder. The kernel
drops a lock when its process dies, so a run killed with SIGKILL never blocks the next one.
`status` and `export` take no lock. (flock is reliable on local disks, not on every network one.)
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from engine.errors import RunBusy

PROBE_RETRIES = 20  # a reader's short probe (status, export) must not refuse a writer: retry ~1 s


def lock_dir(out_dir: Path) -> Path:
    return out_dir / "locks"


class RunLock:
    """The locks one writing process holds; `release()` (or the process's death) frees them."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.dir = lock_dir(out_dir)
        self.fds: list[int] = []

    def acquire(self, *, shard: tuple[int, int], exclusive: bool) -> RunLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            if exclusive:
                self._exclusive()
            else:
                self._shared(*shard)
        except BaseException:
            self.release()
            raise
        return self

    def _exclusive(self) -> None:
        fd = self._open("run.lock")
        for _ in range(PROBE_RETRIES):
            if _try(fd, fcntl.LOCK_EX):
                _describe_me(fd)
                return
            others = writers(self.out_dir)
            if others:
                raise RunBusy(f"{self.out_dir}: being written by {others[0]}; wait for it or stop it")
            time.sleep(0.05)
        raise RunBusy(f"{self.out_dir}: locked by another process; try again")

    def _shared(self, index: int, count: int) -> None:
        if not _try(self._open("run.lock"), fcntl.LOCK_SH):
            holder = writers(self.out_dir)
            who = holder[0] if holder else "another process"
            raise RunBusy(f"{self.out_dir}: being written by {who}; wait for it or stop it")
        if not _try(self._open(f"width-{count}.lock"), fcntl.LOCK_SH):
            raise RunBusy(f"{self.out_dir}: another run is starting; try again")
        for path in sorted(self.dir.glob("width-*.lock")):
            if path.name == f"width-{count}.lock":
                continue
            fd = os.open(path, os.O_RDWR)
            try:
                if not _try(fd, fcntl.LOCK_EX):
                    who = ", ".join(writers(self.out_dir)) or "another process"
                    other = path.stem.removeprefix("width-")
                    raise RunBusy(
                        f"{self.out_dir}: runs with --shard I/{other} are in progress ({who}); "
                        f"a run with another N would repeat their keys: use --shard I/{other} or wait"
                    )
            finally:
                os.close(fd)  # closing drops the probe's lock
        fd = self._open(f"shard-{index:05d}.lock")
        if not _try(fd, fcntl.LOCK_EX):
            who = _read(fd) or "another process"
            raise RunBusy(
                f"{self.out_dir}: shard {index + 1}/{count} is being run by {who}; wait for it or stop it"
            )
        _describe_me(fd)

    def _open(self, name: str) -> int:
        fd = os.open(self.dir / name, os.O_RDWR | os.O_CREAT, 0o644)
        self.fds.append(fd)
        return fd

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def writers(out_dir: Path) -> list[str]:
    """Who writes the run now: one line per live holder (empty when nobody does)."""
    folder = lock_dir(out_dir)
    found = []
    run = folder / "run.lock"
    if run.exists() and _held(run, fcntl.LOCK_SH):
        found.append(run.read_text(errors="replace").strip() or "another process")
    for path in sorted(folder.glob("shard-*.lock")):
        if _held(path, fcntl.LOCK_SH):
            found.append(path.read_text(errors="replace").strip() or "another process")
    return found


def writer_of(out_dir: Path, shard: int) -> str | None:
    """Who writes `shard` of the run now (a plain run or `filter` writes them all), or None."""
    folder = lock_dir(out_dir)
    for path in (folder / "run.lock", folder / f"shard-{shard:05d}.lock"):
        if path.exists() and _held(path, fcntl.LOCK_SH):
            return path.read_text(errors="replace").strip() or "another process"
    return None


def _held(path: Path, probe: int) -> bool:
    """True when another process holds a lock on `path` that conflicts with `probe`."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not _try(fd, probe)
    finally:
        os.close(fd)


def _try(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _describe_me(fd: int) -> None:
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    command = " ".join(["python -m engine", *sys.argv[1:]])
    text = f"pid {os.getpid()} on {socket.gethostname()} (`{command}`, since {since})\n"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
    except OSError:
        pass  # a full disk: the lock holds all the same, only a refused process cannot name us


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace").strip()
