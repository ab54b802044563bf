"""Past one process: N shards sharing one provider limit through Redis, and one process at real latency.

Every client runs as its own process (`python -m engine run spec --shard I/N`) against a fake
OpenAI-compatible server (tests/server.py) hosted here, which enforces the limit over a sliding 60 s
window, and a real redis-server (tests/redis_server.py). Every run is checked: each input record must come
back exactly once with the answer the server echoes. Prints markdown tables.

    python benchmarks/shared_limiter.py                  # shards, cost, longer (~15 min); latency is separate
    python benchmarks/shared_limiter.py --only shards    # N=4, RPM 1200, 200 ms: shared, local, LiteLLM
    python benchmarks/shared_limiter.py --only cost      # the limiter's own cost per request, in-process
    python benchmarks/shared_limiter.py --only longer    # answers 4x longer mid-run: does the window hold?
    python benchmarks/shared_limiter.py --only latency   # one process, 20 s answers, 1000 in flight (~7 min)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.engine_throughput import PROMPT, engine_spec  # noqa: E402
from engine.jsonl import read_jsonl  # noqa: E402
from engine.store import OUTCOMES, stage_files  # noqa: E402
from tests.engine_helpers import write_cases  # noqa: E402
from tests.redis_server import RedisServer, require_redis_server  # noqa: E402
from tests.server import FakeServer, last_user_text  # noqa: E402

NUMBER = re.compile(r"question number (\d+)")
LITELLM_VENV = ROOT / "benchmarks" / ".venv-litellm"
ENGINES = {"engine": ROOT}  # --alt-engine adds "engine-alt" (the longer-answers section)


# ---- shards ---------------------------------------------------------------------------------------
@dataclass
class ShardRun:
    name: str
    shards: int
    records: int
    rpm: int
    outcome: str = ""
    wall_s: float = 0.0
    status: Counter = field(default_factory=Counter)
    served: list[float] = field(default_factory=list)  # server time of every 200
    sent: list[float] = field(default_factory=list)  # server time of every request that arrived
    share: dict[int, int] = field(default_factory=dict)  # shard -> requests sent while all were sending
    cpu_s: float = 0.0
    lines: list[tuple[float, int, str]] = field(default_factory=list)  # (time, shard, stderr line)
    events: dict[str, float] = field(default_factory=dict)  # "kill"/"restart" -> time
    error: str = ""


def client_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_REDIS_URL"}
    env.update(HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
    return env


def launch(argv: list[str], cwd: Path, shard: int, lines: list, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(argv, cwd=cwd, stdout=log.open("wb"), stderr=subprocess.PIPE, env=client_env())

    def read() -> None:  # every stderr line with the time it came: fall-back and rejoin messages
        for raw in proc.stderr:
            lines.append((time.monotonic(), shard, raw.decode(errors="replace").rstrip()))

    threading.Thread(target=read, daemon=True).start()
    return proc


def running(proc: subprocess.Popen) -> bool:
    """Not exited yet; unlike `poll()`, this leaves an exited child unreaped, for wait4's CPU figures."""
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def shard_commands(
    tool: str, folder: Path, url: str, n: int, rpm: int, concurrency: int, limiter: str | None
) -> Iterator[list[str]]:
    if tool == "litellm":
        python = LITELLM_VENV / "bin" / "python"
        for i in range(n):
            args = [str(python), str(ROOT / "benchmarks" / "peers" / "litellm_run.py"), "--url", url]
            args += ["--input", str(folder / "cases.jsonl"), "--output", str(folder / f"answers-{i}.jsonl")]
            args += ["--shard", f"{i}/{n}", "--rpm", str(rpm), "--concurrency", str(concurrency // n)]
            args += ["--redis", limiter or ""]
            yield args
        return
    spec = engine_spec(folder, url, rpm=rpm, concurrency=concurrency, limiter=limiter)
    for i in range(1, n + 1):
        yield [sys.executable, "-m", "engine", "run", str(spec), "--shard", f"{i}/{n}", "--quiet"]


def outcomes(tool: str, folder: Path, n: int) -> tuple[list[dict], dict[str, int]]:
    """Every outcome written (id + answer or None) and which shard wrote each id."""
    rows, shard_of = [], {}
    if tool == "litellm":
        for i in range(n):
            for row in read_jsonl(folder / f"answers-{i}.jsonl"):
                rows.append(row)
                shard_of[row["id"]] = i
        return rows, shard_of
    for kind in OUTCOMES:
        for path in stage_files(folder / "out" / "answer", kind):
            shard = int(path.stem.split("-")[1])
            for entry in read_jsonl(path):
                rows.append({"id": entry["id"], "answer": entry.get("answer") if kind == "kept" else None})
                shard_of[entry["id"]] = shard
    return rows, shard_of


def check_outcomes(rows: list[dict], n: int, answer: Callable[[int], str] | None = None) -> str:
    """`N/N ok` when each of the n records has exactly one outcome, with the answer it should have."""
    answer = answer or (lambda i: PROMPT.format(question=f"question number {i}"))
    expected = {f"c{i:04d}": answer(i) for i in range(n)}
    counts = Counter(str(r["id"]) for r in rows)
    missing = sum(1 for rid in expected if rid not in counts)
    repeated = sum(c - 1 for c in counts.values() if c > 1)
    wrong = sum(1 for r in rows if expected.get(str(r["id"])) != r["answer"])
    if missing == repeated == wrong == 0:
        return f"{n}/{n} ok"
    return f"{n - missing}/{n} present, {missing} missing, {repeated} repeated, {wrong} wrong/failed"


def run_shards(
    name: str,
    tool: str,
    base: Path,
    *,
    n: int,
    records: int,
    rpm: int,
    spec_rpm: int,
    concurrency: int,
    redis: RedisServer | None,
    outage: tuple[float, float] | None = None,
) -> ShardRun:
    """`n` shard processes; `outage` = (kill, restart) Redis once these fractions of records were sent."""
    result = ShardRun(name, n, records, rpm)
    if tool == "litellm" and not (LITELLM_VENV / "bin" / "python").exists():
        result.error = "not installed (benchmarks/.venv-litellm missing: see docs/benchmarks.md)"
        return result
    folder = base / name.replace(" ", "-").replace(",", "")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_cases(folder / "cases.jsonl", records)
    server = FakeServer(latency_s=0.2, rpm=rpm, rate_window_s=60.0).start()
    limiter = redis.url if redis else None
    try:
        started = time.monotonic()
        commands = shard_commands(tool, folder, server.url, n, spec_rpm, concurrency, limiter)
        procs = [
            launch(argv, ROOT, i, result.lines, folder / f"shard-{i}.log") for i, argv in enumerate(commands)
        ]
        if outage and redis:
            for event, fraction in zip(("kill", "restart"), outage, strict=True):
                while server.requests < fraction * records and any(map(running, procs)):
                    time.sleep(0.01)
                result.events[event] = time.monotonic()
                redis.kill() if event == "kill" else redis.start()
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            result.cpu_s += usage.ru_utime + usage.ru_stime
            if os.waitstatus_to_exitcode(status) != 0 and not result.error:
                tail = [line for _, i, line in result.lines if i == procs.index(proc)][-3:]
                result.error = f"exit {os.waitstatus_to_exitcode(status)}: {' | '.join(tail)}"
        result.wall_s = time.monotonic() - started
        result.status = Counter(server.status_counts)
        result.served = [t for t, _ in server.served_tokens]
        result.sent = list(server.arrivals)
        bodies = list(zip(server.bodies, server.arrivals, strict=True))
    finally:
        server.stop()
        if redis and redis.proc is not None and redis.proc.poll() is not None:
            redis.start()  # the next run finds it up
    rows, shard_of = outcomes(tool, folder, n)
    result.outcome = check_outcomes(rows, records)
    # each shard's share of the requests sent while every shard was sending: 1/N each is fair
    number_shard = {int(rid[1:]): shard for rid, shard in shard_of.items()}
    sent: dict[int, list[float]] = {}
    for body, at in bodies:
        match = NUMBER.search(last_user_text(body))
        if match and (shard := number_shard.get(int(match.group(1)))) is not None:
            sent.setdefault(shard, []).append(at)
    if len(sent) == n:
        start, end = max(t[0] for t in sent.values()), min(t[-1] for t in sent.values())
        result.share = {shard: sum(start <= t <= end for t in times) for shard, times in sent.items()}
    return result


def most_in_window(times: list[float], width: float) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def fewest_in_window(times: list[float], width: float) -> int | None:
    """The fewest in any full `width` window from the first to the last time (None: run too short)."""
    if not times or times[-1] - times[0] < width:
        return None
    fewest, hi = len(times), 0
    for lo, t in enumerate(times):
        if t + width > times[-1]:
            break
        while hi < len(times) and times[hi] < t + width:
            hi += 1
        fewest = min(fewest, hi - lo)
    return fewest


def shard_table(results: list[ShardRun]) -> str:
    cols = (
        "setting", "records", "wall s", "achieved/limit", "most sent in 60 s / limit",
        "fewest 200s in 60 s / limit", "429s", "each shard's share while all sent", "client CPU s",
        "outcomes",
    )  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        if r.error:
            lines.append(f"| {r.name} | {r.records} | " + " | ".join(["-"] * 7) + f" | {r.error} |")
            continue
        served = sorted(r.served)
        span = served[-1] - served[0] if len(served) > 1 else 0.0
        achieved = (len(served) - 1) / span * 60 / r.rpm if span else 0.0
        fewest = fewest_in_window(served, 60.0)
        total = sum(r.share.values()) or 1
        shares = ", ".join(f"{r.share.get(i, 0) / total:.2f}" for i in range(r.shards))
        cells = [
            r.name, r.records, f"{r.wall_s:.0f}", f"{achieved:.3f}",
            f"{most_in_window(r.sent, 60.0) / r.rpm:.3f}",
            f"{fewest / r.rpm:.3f}" if fewest is not None else "-",
            r.status.get(429, 0), shares, f"{r.cpu_s:.1f}", r.outcome,
        ]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def outage_lines(r: ShardRun) -> list[str]:
    out = []
    for event, word in (("kill", "does not answer"), ("restart", "answers again")):
        if event not in r.events:
            continue
        seen = {}
        for at, shard, line in r.lines:
            if word in line and shard not in seen:
                seen[shard] = at - r.events[event]
        times = ", ".join(f"{seen[s]:.2f}" if s in seen else "never" for s in range(r.shards))
        label = "Redis killed -> shard falls back" if event == "kill" else "Redis restarted -> shard rejoins"
        out.append(f"- {r.name}: {label}, s per shard: {times}")
    return out


def shards_section(a: argparse.Namespace, base: Path) -> int:
    redis = RedisServer(require_redis_server()).start()
    n, rpm, records = a.shards, a.rpm, a.records
    plan = [
        ("shared (Redis)", "engine", {"spec_rpm": rpm, "redis": redis}),
        ("shared, Redis killed at 1/3, restarted at 2/3", "engine",
         {"spec_rpm": rpm, "redis": redis, "outage": (1 / 3, 2 / 3)}),
        ("local, each shard told the account's rpm", "engine", {"spec_rpm": rpm, "redis": None}),
        (f"local, each shard told rpm/{n} by hand", "engine", {"spec_rpm": rpm // n, "redis": None}),
        ("LiteLLM Router, Redis usage-based routing", "litellm", {"spec_rpm": rpm, "redis": redis}),
        ("LiteLLM Router, Redis killed at 1/3, restarted at 2/3", "litellm",
         {"spec_rpm": rpm, "redis": redis, "outage": (1 / 3, 2 / 3)}),
    ]  # fmt: skip
    results = []
    try:
        for name, tool, kw in plan:
            if a.skip and any(word in name.lower() for word in a.skip.split(",")):
                continue
            print(f"running {name} ...", file=sys.stderr, flush=True)
            concurrency = a.concurrency if "by hand" not in name else a.concurrency // n
            if tool == "engine" and kw["redis"] is None and "by hand" not in name:
                concurrency = a.concurrency  # today: every shard takes the whole setting
            results.append(
                run_shards(name, tool, base, n=n, records=records, rpm=rpm, concurrency=concurrency, **kw)
            )
            redis.kill()
            redis.start()  # every run starts from an empty Redis
    finally:
        redis.kill()
    print(f"\n{n} shards, RPM {rpm} enforced by the server over a sliding 60 s window, 200 ms latency, "
          f"{records} records, max_concurrency {a.concurrency} (the account total)\n")  # fmt: skip
    print(shard_table(results) + "\n")
    for r in results:
        for line in outage_lines(r):
            print(line)
        failed = [line for _, _, line in r.lines if " failed, e.g. " in line]
        if failed:
            print(f"- {r.name}: {failed[0]}")

    return 0 if all(r.error or r.outcome.endswith(" ok") for r in results) else 1


# ---- the limiter's own cost -------------------------------------------------------------------------
def cost_section(a: argparse.Namespace) -> int:
    from engine.limiter import Limiter
    from engine.limiter_redis import SharedLimiter
    from engine.types import Completion, Usage

    async def measure(limiter: Limiter, requests: int, concurrency: int) -> tuple[float, float]:
        answer = Completion("ok", usage=Usage(60, 40), latency_s=0.01)
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                async with limiter.slot(120):
                    await asyncio.sleep(0)
                limiter.on_success(120, answer)

        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (time.perf_counter() - wall) / requests * 1e6, (time.process_time() - cpu) / requests * 1e6

    redis = RedisServer(require_redis_server()).start()
    rows = []
    try:
        for concurrency in (1, 64):
            for label in ("local", "shared"):
                # limits far above what is sent: every request is admitted at once, so what is timed
                # is the limiter's bookkeeping (and, shared, its Redis round trips), never a wait
                kw = {"rpm": 10**8, "tpm": 10**11, "max_concurrency": concurrency}

                async def go(label: str = label, kw: dict = kw, concurrency: int = concurrency) -> tuple:
                    if label == "local":
                        limiter = Limiter(**kw)
                    else:
                        limiter = SharedLimiter(url=redis.url, account="bench", **kw)
                    await measure(limiter, 200, concurrency)  # warm up: connections, script load
                    wall, cpu = await measure(limiter, a.cost_requests, concurrency)
                    calls = getattr(limiter, "calls", 0)
                    await limiter.aclose()
                    return wall, cpu, calls / (a.cost_requests + 200)

                wall, cpu, calls = asyncio.run(go())
                rows.append((concurrency, label, wall, cpu, calls))
    finally:
        redis.kill()
    print(f"\nlimiter cost, {a.cost_requests} requests, limits never reached (nothing waits)\n")
    print("| in flight | limiter | wall µs / request | client CPU µs / request | Redis calls / request |")
    print("|---|---|---|---|---|")
    for concurrency, label, wall, cpu, calls in rows:
        print(f"| {concurrency} | {label} | {wall:.0f} | {cpu:.0f} | {calls:.2f} |")
    return 0


# ---- one process --------------------------------------------------------------------------------------
def one_process(
    folder: Path,
    server: FakeServer,
    engine_dir: Path,
    records: int,
    concurrency: int,
    answer: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """`python -m engine run` once; the server's requests in flight sampled every 0.1 s meanwhile."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_cases(folder / "cases.jsonl", records)
    spec = engine_spec(folder, server.url, rpm=10**7, concurrency=concurrency, limiter=None)
    samples: list[tuple[float, int]] = []
    argv = [sys.executable, "-m", "engine", "run", str(spec), "--quiet"]
    with (folder / "client.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=engine_dir, stdout=log, stderr=subprocess.STDOUT, env=client_env())
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            samples.append((time.monotonic(), server.in_flight))
            time.sleep(0.1)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError((folder / "client.log").read_text()[-2000:])
    manifest = orjson.loads((folder / "out" / "manifest.json").read_bytes())
    rows, _ = outcomes("engine", folder, 1)
    return {
        "seconds": manifest["stages"]["answer"]["seconds"],
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "outcome": check_outcomes(rows, records, answer),
        "samples": samples,
        "max_in_flight": server.max_in_flight,
    }


def latency_section(a: argparse.Namespace, base: Path) -> int:
    """Answers of 100 tokens at latency/100 s per token, as a provider decodes them; the preflight's
    1-token answer comes back at once, as it does from a real provider."""
    latency, concurrency, records = a.latency, a.in_flight, a.latency_records

    def answer(body: dict) -> str:
        return "x" * 400 if NUMBER.search(last_user_text(body)) else "pong"

    server = FakeServer(latency_per_token_s=latency / 100, answer=answer, keep_bodies=False).start()
    try:
        r = one_process(base / "latency", server, ROOT, records, concurrency, lambda i: "x" * 400)
    finally:
        server.stop()
    physical = concurrency / latency
    rate = records / r["seconds"]
    print(f"\none process, {latency:g} s answers, max_concurrency {concurrency}, {records} records\n")
    print("| req/s | physical limit (in flight / latency) | req/s / limit | most in flight at the server "
          "| client CPU s | CPU ms / request | peak RSS MB | outcomes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {rate:.1f} | {physical:.0f} | {rate / physical:.3f} | {r['max_in_flight']} | {r['cpu_s']:.1f} "
        f"| {r['cpu_s'] / records * 1000:.2f} | {r['rss_mb']:.0f} | {r['outcome']} |"
    )
    return 0 if r["outcome"].endswith(" ok") else 1


def longer_section(a: argparse.Namespace, base: Path) -> int:
    """Answers of 100 tokens, then of 400: 4x longer and 4x slower (20 ms per token), the server no busier.
    The engine's window should stay at max_concurrency; the server's requests in flight show it."""
    records, concurrency, per_token = a.longer_records, a.longer_concurrency, 0.02
    short, long = 100, 400  # tokens of 4 characters
    first_long: list[float] = []

    def text(number: int) -> str:
        return "x" * 4 * (short if number < records // 2 else long)

    def answer(body: dict) -> str:
        match = NUMBER.search(last_user_text(body))
        if match is None:  # the preflight's "ping"
            return "pong"
        number = int(match.group(1))
        if number >= records // 2 and not first_long:
            first_long.append(time.monotonic())
        return text(number)

    change = f"{short * per_token:g} s -> {long * per_token:g} s"
    print(f"\nanswers 4x longer from record {records // 2} on ({change}), max_concurrency {concurrency}, "
          f"{records} records\n")  # fmt: skip
    print("| engine | in flight at the server, short answers: median | long answers: median | long: 10th "
          "percentile | outcomes |")  # fmt: skip
    print("|---|---|---|---|---|")
    status = 0
    for label, engine_dir in ENGINES.items():
        first_long.clear()
        server = FakeServer(latency_per_token_s=per_token, keep_bodies=False, answer=answer).start()
        try:
            r = one_process(base / f"longer-{label}", server, engine_dir, records, concurrency, text)
            last_sent = server.arrivals[-1]
            start = server.arrivals[0]
        finally:
            server.stop()
        # steady states: past the first round trip of each phase, until the last request is sent
        switch = first_long[0]
        phase1 = [n for t, n in r["samples"] if start + short * per_token < t < switch] or [0]
        phase2 = [n for t, n in r["samples"] if switch + long * per_token < t < last_sent] or [0]
        print(
            f"| {label} | {statistics.median(phase1):.0f} | {statistics.median(phase2):.0f} "
            f"| {statistics.quantiles(phase2, n=10)[0]:.0f} "
            f"| {r['outcome']} |"
        )
        status |= 0 if r["outcome"].endswith(" ok") else 1
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["shards", "cost", "latency", "longer"])
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--rpm", type=int, default=1200)
    p.add_argument("--records", type=int, default=3000, help="records per shards run")
    p.add_argument("--concurrency", type=int, default=64, help="max_concurrency: the account total")
    p.add_argument("--skip", default="", help="shards runs to leave out, by a word: local,litellm")
    p.add_argument("--cost-requests", type=int, default=5000)
    p.add_argument("--latency", type=float, default=20.0)
    p.add_argument("--in-flight", type=int, default=1000)
    p.add_argument("--latency-records", type=int, default=20000)
    p.add_argument("--longer-records", type=int, default=1200)
    p.add_argument("--longer-concurrency", type=int, default=100)
    p.add_argument("--alt-engine", type=Path, help="longer: also run the engine of this checkout")
    p.add_argument("--keep", type=Path, help="keep every run's folder under this one")
    a = p.parse_args(argv)
    if a.alt_engine:
        ENGINES["engine-alt"] = a.alt_engine.resolve()
    base = a.keep or Path(tempfile.mkdtemp(prefix="shared-limiter-"))
    sections = [a.only] if a.only else ["shards", "cost", "longer"]
    status = 0
    for section in sections:
        if section == "shards":
            status |= shards_section(a, base)
        elif section == "cost":
            status |= cost_section(a)
        elif section == "latency":
            status |= latency_section(a, base)
        elif section == "longer":
            status |= longer_section(a, base)
    if a.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n{os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.1f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
