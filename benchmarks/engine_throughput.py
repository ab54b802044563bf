"""Engine throughput: request overhead, rate-limit tracking and a side-by-side run against peers.

Every client (our engine through `python -m engine run`, curator and distilabel through their runner
scripts in benchmarks/peers/) runs as its own process against a fresh fake OpenAI-compatible server
(tests/server.py) hosted in this process, which only waits meanwhile. Each run is checked: every input
record must come back exactly once with the answer the server echoes. Prints a markdown table.

    python benchmarks/engine_throughput.py                      # overhead + limits, engine and peers
    python benchmarks/engine_throughput.py --only overhead      # engine, zero-latency server
    python benchmarks/engine_throughput.py --only limits        # engine, RPM 1200 + 200 ms server
    python benchmarks/engine_throughput.py --only peers         # same as the default
    python benchmarks/engine_throughput.py --workload overhead  # engine and peers, overhead only
    python benchmarks/engine_throughput.py --only memory        # peak RSS, 3000 vs 30000 records
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.jsonl import read_jsonl  # noqa: E402
from engine.store import OUTCOMES, read_outcome  # noqa: E402
from tests.engine_helpers import write_cases  # noqa: E402
from tests.server import FakeServer  # noqa: E402

ENGINES = {"engine": ROOT}  # engine label -> checkout it runs from; --alt-engine adds "engine-alt"
PEER_VENVS = {"curator": "benchmarks/.venv-curator", "distilabel": "benchmarks/.venv-distilabel"}
PROMPT = "Answer briefly: {question}"  # the fake server echoes it: the expected answer of every record


@dataclass(frozen=True)
class Workload:
    name: str
    latency_s: float
    rpm: int | None  # enforced by the server and given to every client that can limit itself


OVERHEAD = Workload("overhead", 0.0, None)
LIMITS = Workload("limits", 0.2, 1200)


@dataclass
class Result:
    workload: Workload
    tool: str
    records: int
    wall_s: float = 0.0  # the process, start to exit (interpreter start and imports included)
    work_s: float = 0.0  # the tool's own timing of the run alone
    status: Counter = field(default_factory=Counter)  # HTTP statuses the server sent
    outcome: str = ""
    cpu_s: float = 0.0  # user + system CPU of the client process and the children it reaped
    rss_mb: float | None = None
    load: float = 0.0
    error: str = ""


def engine_spec(
    folder: Path, url: str, *, concurrency: int, rpm: int = 0, limiter: str | None = None
) -> Path:
    """The benchmarks' spec: one template stage over cases.jsonl against the fake server (`limiter`: a
    shared limiter's URL, benchmarks/shared_limiter.py)."""
    run = f'limiter = "{limiter}"\n' if limiter else ""
    rpm_line = f"rpm = {rpm}\n" if rpm else ""
    spec = f"""[run]
name = "bench"
out = "out"
{run}
[providers.teacher]
kind = "openai"
base_url = "{url}"
model = "test-model"
max_concurrency = {concurrency}
{rpm_line}
[[stages]]
name = "answer"
generator = "template"
provider = "teacher"
input = "cases.jsonl"
prompt = "{PROMPT}"
"""
    (folder / "spec.toml").write_text(spec)
    return folder / "spec.toml"


def command(tool: str, folder: Path, url: str, workload: Workload, concurrency: int) -> list[str]:
    if tool in ENGINES:
        spec = engine_spec(folder, url, concurrency=concurrency, rpm=workload.rpm)
        return [sys.executable, "-m", "engine", "run", str(spec), "--quiet"]
    python = ROOT / PEER_VENVS[tool] / "bin" / "python"
    args = [str(python), str(ROOT / "benchmarks" / "peers" / f"{tool}_run.py"), "--url", url]
    args += ["--input", str(folder / "cases.jsonl"), "--output", str(folder / "answers.jsonl")]
    args += ["--concurrency", str(concurrency), "--work", str(folder / "peer-work")]
    if tool == "curator" and workload.rpm:
        args += ["--rpm", str(workload.rpm)]
    return args


def answers(tool: str, folder: Path) -> tuple[list[dict], float]:
    """Every outcome the tool wrote (id + answer, or a failure) and its own timing of the run."""
    if tool in ENGINES:
        manifest = orjson.loads((folder / "out" / "manifest.json").read_bytes())
        rows = [
            {"id": entry["id"], "answer": entry.get("answer") if kind == "kept" else None}
            for kind in OUTCOMES
            for entry in read_outcome(folder / "out" / "answer", kind)
        ]
        return rows, manifest["stages"]["answer"]["seconds"]
    rows = list(read_jsonl(folder / "answers.jsonl"))
    # the runner's last word on stdout: {"peer", "seconds", "rows"}
    report = [
        line for line in (folder / "client.log").read_bytes().splitlines() if line.startswith(b'{"peer"')
    ]
    return rows, orjson.loads(report[-1])["seconds"]


def check_outcomes(rows: list[dict], n: int) -> str:
    """`ok` only if each of the n records has exactly one outcome and it is the right answer."""
    expected = {f"c{i:04d}": PROMPT.format(question=f"question number {i}") for i in range(n)}
    counts = Counter(str(r["id"]) for r in rows)
    missing = sum(1 for rid in expected if rid not in counts)
    repeated = sum(c - 1 for c in counts.values() if c > 1)
    wrong = sum(1 for r in rows if expected.get(str(r["id"])) != r["answer"])
    if missing == repeated == wrong == 0 and len(counts) == n:
        return f"{n}/{n} ok"
    return f"{n - missing}/{n} present, {missing} missing, {repeated} repeated, {wrong} wrong/failed"


def client_env() -> dict[str, str]:
    """Quiet, offline clients: no progress bars or per-request log lines competing for the CPU."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TELEMETRY_ENABLED": "false",
        "DISTILABEL_LOG_LEVEL": "WARNING",
    }
    env.update(CURATOR_DISABLE_RICH_DISPLAY="1", LITELLM_LOCAL_MODEL_COST_MAP="True")
    return env


def run_one(tool: str, workload: Workload, n: int, concurrency: int, base: Path) -> Result:
    result = Result(workload, tool, n, load=os.getloadavg()[0])
    python = ROOT / PEER_VENVS.get(tool, ".venv") / "bin" / "python"
    if tool not in ENGINES and not python.exists():
        result.error = f"not installed ({PEER_VENVS[tool]} missing: see docs/benchmarks.md)"
        return result
    folder = base / f"{workload.name}-{tool}-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_cases(folder / "cases.jsonl", n)
    server = FakeServer(latency_s=workload.latency_s, rpm=workload.rpm, keep_bodies=False).start()
    try:
        with (folder / "client.log").open("wb") as log:
            started = time.perf_counter()
            argv = command(tool, folder, server.url, workload, concurrency)
            cwd = ENGINES.get(tool, ROOT)  # `python -m engine` imports the engine of its working folder
            proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=client_env())
            _, status, usage = os.wait4(proc.pid, 0)
            result.wall_s = time.perf_counter() - started
        result.status = Counter(server.status_counts)
    finally:
        server.stop()
    result.cpu_s = usage.ru_utime + usage.ru_stime
    result.rss_mb = usage.ru_maxrss / 1024
    if os.waitstatus_to_exitcode(status) != 0:
        tail = (folder / "client.log").read_text(errors="replace").strip().splitlines()[-3:]
        result.error = f"exit {os.waitstatus_to_exitcode(status)}: {' | '.join(tail)}"
        return result
    rows, result.work_s = answers(tool, folder)
    result.outcome = check_outcomes(rows, n)
    return result


COLUMNS = (
    "workload", "tool", "records", "wall s", "run s", "req/s", "client CPU s", "achieved/limit",
    "server statuses", "outcomes", "peer/engine wall", "peer/engine run", "load1",
)  # fmt: skip


def table(results: list[Result]) -> str:
    """wall: the process start to exit; run: the tool's own timing; ratios above 1: the engine was faster."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    engine = {r.workload.name: r for r in results if r.tool == "engine" and not r.error}
    for r in results:
        w = r.workload
        setting = f"{w.name} ({w.latency_s * 1000:g} ms, " + (f"{w.rpm} rpm)" if w.rpm else "no limit)")
        if r.error:
            cells = [setting, r.tool, r.records, *["-"] * 6, r.error, "-", "-", f"{r.load:.1f}"]
        else:
            rate = r.records / r.work_s
            base = engine.get(w.name)
            peer = base is not None and r is not base and r.tool != "engine"
            cells = [
                setting, r.tool, r.records, f"{r.wall_s:.1f}", f"{r.work_s:.1f}", f"{rate:.0f}",
                f"{r.cpu_s:.1f}",
                f"{rate * 60 / w.rpm:.3f}" if w.rpm else "-",
                ", ".join(f"{k}: {v}" for k, v in sorted(r.status.items())), r.outcome,
                f"{r.wall_s / base.wall_s:.2f}" if peer else "-",
                f"{r.work_s / base.work_s:.2f}" if peer else "-",
                f"{r.load:.1f}",
            ]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def goals(results: list[Result]) -> list[str]:
    """The spec's goals, each marked met or missed (the table holds the numbers)."""
    out = []
    for lim in results:
        if lim.tool not in ENGINES or lim.workload is not LIMITS or lim.error:
            continue
        ratio, refused = lim.records / lim.work_s * 60 / LIMITS.rpm, lim.status.get(429, 0)
        met = ratio >= 0.97 and refused == 0
        out.append(
            f"limits, {lim.tool}: achieved/limit {ratio:.3f} (goal >= 0.97), {refused} 429s (goal 0): "
            f"{'met' if met else 'MISSED'}"
        )
    for e in results:
        for r in results:
            if (
                e.tool not in ENGINES
                or r.tool in ENGINES
                or e.workload is not r.workload
                or e.error
                or r.error
            ):
                continue
            faster = e.work_s < r.work_s and e.wall_s < r.wall_s
            out.append(
                f"{r.workload.name}: {e.tool} faster than {r.tool} (run and wall): "
                f"{'met' if faster else 'MISSED'}"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=3000)
    p.add_argument("--only", choices=["overhead", "limits", "peers", "memory"])
    p.add_argument(
        "--workload", choices=["overhead", "limits"], help="with peers (the default): only this one"
    )
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight, the same for every tool")
    p.add_argument(
        "--peers", default="curator,distilabel", help="comma-separated; those not installed show so"
    )
    p.add_argument(
        "--keep", type=Path, help="keep every run's folder under this one (default: a temp folder)"
    )
    p.add_argument(
        "--alt-engine",
        type=Path,
        help="also run the engine of this checkout (a patch to compare), as engine-alt",
    )
    a = p.parse_args(argv)
    engines = ["engine"]
    if a.alt_engine:
        ENGINES["engine-alt"] = a.alt_engine.resolve()
        engines.append("engine-alt")
    peers = [t for t in a.peers.split(",") if t]
    if unknown := [t for t in peers if t not in PEER_VENVS]:
        p.error(f"--peers: unknown {', '.join(unknown)} (known: {', '.join(PEER_VENVS)})")
    plan: list[tuple[str, Workload, int]] = []
    if a.only == "overhead":
        plan = [(tool, OVERHEAD, a.records) for tool in engines]
    elif a.only == "limits":
        plan = [(tool, LIMITS, a.records) for tool in engines]
    elif a.only == "memory":
        plan = [("engine", OVERHEAD, a.records), ("engine", OVERHEAD, a.records * 10)]
    else:
        chosen = [w for w in (OVERHEAD, LIMITS) if a.workload in (None, w.name)]
        plan = [(tool, w, a.records) for w in chosen for tool in [*engines, *peers]]
    base = a.keep or Path(tempfile.mkdtemp(prefix="engine-throughput-"))
    results = []
    for tool, workload, n in plan:
        print(f"running {tool} on {workload.name} ({n} records) ...", file=sys.stderr, flush=True)
        results.append(run_one(tool, workload, n, a.concurrency, base))
    if a.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"\n{os.cpu_count()} cores, concurrency {a.concurrency} for every tool, "
        f"load average at the end {os.getloadavg()[0]:.1f}\n"
    )
    print(table(results) + "\n")
    for line in goals(results):
        print(f"- {line}")
    if a.only == "memory":
        print("\n" + "\n".join(f"- engine, {r.records} records: peak RSS {r.rss_mb:.0f} MB" for r in results))
    return 0 if all(not r.error and r.outcome.endswith(" ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
