"""Peak memory of `engine run` against huge response bodies: with `max_response_mb` (default 16) against
the same engine with the cap lifted (what every run did before the cap existed).

The fake server (tests/server.py, hosted in this process) answers every request with a padded body sent
chunked (no Content-Length, so the client must count while it reads). The engine runs as its own process;
its peak RSS comes from wait4(). Prints a markdown table.

    python benchmarks/response_cap.py                          # 50 MB bodies, concurrency 8, 16 items
    python benchmarks/response_cap.py --body-mb 8 --items 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.engine_helpers import outcomes, write_spec  # noqa: E402
from tests.server import FakeServer  # noqa: E402


def run(folder: Path, url: str, cap_mb: float, items: int, concurrency: int) -> dict:
    folder.mkdir(parents=True)
    provider = f"max_response_mb = {cap_mb}\nmax_retries = 0"
    spec = write_spec(folder, url, cases=items, concurrency=concurrency, provider=provider)
    env = {**os.environ, "TEST_ENGINE_KEY": "k"}
    started = time.perf_counter()
    with (folder / "engine.log").open("wb") as log:
        argv = [sys.executable, "-m", "engine", "run", str(spec), "--quiet"]
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    out = folder / "out"
    return {
        "cap": f"{cap_mb:g} MB",
        "rss_mb": usage.ru_maxrss / 1024,
        "wall_s": time.perf_counter() - started,
        "exit": os.waitstatus_to_exitcode(status),
        "kept": len(outcomes(out, "answer", "kept")),
        "failed": len(outcomes(out, "answer", "failed")),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--body-mb", type=float, default=50.0)
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--cap-mb", type=float, default=16.0, help="the capped run's max_response_mb")
    a = p.parse_args()
    pad = int(a.body_mb * 1024 * 1024)
    rows = []
    with tempfile.TemporaryDirectory(prefix="response-cap-") as tmp:
        for name, cap in (("capped", a.cap_mb), ("uncapped", 4 * a.body_mb)):
            with FakeServer(pad_bytes=pad, chunked=True, keep_bodies=False) as server:
                rows.append(run(Path(tmp) / name, server.url, cap, a.items, a.concurrency))
    print(f"{a.items} items, {a.body_mb:g} MB bodies (chunked), max_concurrency {a.concurrency}\n")
    print("| max_response_mb | peak RSS | wall | exit | kept | failed |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["cap"], f"{r['rss_mb']:.0f} MB", f"{r['wall_s']:.1f} s", r["exit"], r["kept"], r["failed"]]
        print("| " + " | ".join(map(str, cells)) + " |")
    print(f"\npeak RSS, uncapped / capped: {rows[1]['rss_mb'] / rows[0]['rss_mb']:.1f}x")


if __name__ == "__main__":
    main()
