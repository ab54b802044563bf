"""`engine view` on a large stage: page, filter, search and record latency over HTTP, against reading the
stage whole for every request (what a viewer without an index does), in the same run.

    python benchmarks/view_latency.py [--records 100000] [--repeat 5] [--keep DIR]

Writes a synthetic run (Chinese diagnosis-like records of ~1 KB: 90% kept, 9% rejected by two filters,
1% failed) to a temporary folder, starts `python -m engine view` on it as a subprocess and times each
request with urllib (median and worst of --repeat after the first, which builds the index). The peer:
the same page or search answered by `engine.store.read_outcome` over the whole stage, in this process.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.store import read_outcome  # noqa: E402

SYMPTOMS = ["发热", "咳嗽", "胸痛", "腹痛", "头晕", "乏力", "恶心", "呕吐", "气促", "心悸", "水肿", "黑便"]
DISEASES = ["社区获得性肺炎", "2型糖尿病", "冠心病", "急性胆囊炎", "慢性阻塞性肺疾病", "高血压", "消化性溃疡"]
RARE = "罕见综合征甲"  # in exactly one record: a needle for search


def record(i: int, rng: random.Random) -> dict:
    picked = rng.sample(SYMPTOMS, 3)
    text = (
        f"性别: {'男' if i % 2 else '女'}\n年龄: {20 + i % 60}\n主诉: {'、'.join(picked)}{1 + i % 9}天\n"
        f"现病史: 患者{1 + i % 9}天前无明显诱因出现{picked[0]}，伴{picked[1]}，{picked[2]}，"
        + "活动后加重，休息后可缓解，无畏寒寒战，饮食睡眠可，二便正常。"
        * 3
        + f"\n体格检查: T {36 + (i % 30) / 10:.1f}℃，心肺听诊未见明显异常。\n"
        f"辅助检查: 血常规 WBC {4 + i % 12}.{i % 10}×10^9/L，CRP {i % 80}mg/L。"
    )
    diseases = rng.sample(DISEASES, 1 + i % 3)
    if i == 4321:
        diseases = [RARE]
    return {
        "id": f"r{i:06d}",
        "feature_content": text,
        "reason": [f"{p}{1 + i % 9}天" for p in picked] + [f"WBC {4 + i % 12}.{i % 10}×10^9/L"],
        "diseases": diseases,
        "meta": {
            "provider": "teacher",
            "model": "deepseek-v3",
            "latency_s": round(rng.uniform(0.5, 4), 3),
            "usage": {"prompt_tokens": 900 + i % 300, "completion_tokens": 80 + i % 60},
            "finish_reason": "stop",
            "attempts": 1,
            "calls": 1,
        },
    }


def write_run(root: Path, n: int, name: str = "big", edit: float = 0.0) -> Path:
    """The run `name`; with `edit`, that share of the answers changed (a later version to compare)."""
    rng = random.Random(0)
    edits = random.Random(1)
    out = root / name / "out"
    stage = out / "dx"
    for outcome in ("kept", "rejected", "failed"):
        (stage / outcome).mkdir(parents=True)
    files = {o: open(stage / o / "shard-00000.jsonl", "wb") for o in ("kept", "rejected", "failed")}
    counts = {"kept": 0, "rejected": 0, "failed": 0}
    for i in range(n):
        rec = record(i, rng)
        if edit and edits.random() < edit:
            rec["diseases"] = rec["diseases"][:1] + ["高血压"]
            rec["reason"] = [point + "，明显" for point in rec["reason"][:3]]
        if i % 100 == 7:
            line = {"key": f"k{i}", "id": rec["id"], "error": "Fatal", "message": "HTTP 400: bad request"}
            outcome = "failed"
        elif i % 100 < 5 and i > 0:
            dup = f"r{i - 1:06d}"
            reason = f"near-duplicate: rouge_l 0.8{i % 10}00 > 0.7 vs id {dup!r}"
            line = {
                "id": rec["id"],
                "key": f"k{i}",
                "filter": "rouge_dedupe",
                "reason": reason,
                "record": rec,
            }
            outcome = "rejected"
        elif 10 <= i % 100 < 14:
            reason = f"too many items: diseases has 5, more than 4 ({i})"
            line = {"id": rec["id"], "key": f"k{i}", "filter": "format", "reason": reason, "record": rec}
            outcome = "rejected"
        else:
            line, outcome = rec, "kept"
        files[outcome].write(orjson.dumps(line) + b"\n")
        counts[outcome] += 1
    for f in files.values():
        f.close()
    manifest = {
        "name": name,
        "description": f"{n} synthetic records",
        "created": f"2026-12-0{1 + int(edit > 0)}T00:00:00Z",
        "status": "complete",
        "providers": {"teacher": {"kind": "openai", "model": "deepseek-v3", "requests": n}},
        "stages": {
            "dx": {"counts": {**counts, "pending": 0}, "reasons": {}, "stats": {"records": counts["kept"]}}
        },
    }
    (out / "manifest.json").write_bytes(orjson.dumps(manifest))
    return out


def start_viewer(root: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "view", str(root)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = proc.stdout.readline()
    found = re.search(r"http://\S+/", line)
    if not found:
        proc.kill()
        raise SystemExit(f"the viewer did not start: {line}")
    return proc, found.group(0)


def timed(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        body = response.read()
    return time.perf_counter() - started, len(body)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peer_page(stage: Path, offset: int) -> None:
    """The page a viewer without an index shows: every record read, 50 kept."""
    rows = [r for outcome in ("kept", "rejected", "failed") for r in read_outcome(stage, outcome)]
    rows[offset : offset + 50]


def peer_search(stage: Path, text: str) -> None:
    hits = []
    for outcome in ("kept", "rejected", "failed"):
        for r in read_outcome(stage, outcome):
            if text in orjson.dumps(r).decode():
                hits.append(r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--compare", action="store_true", help="also compare with a second, edited run")
    parser.add_argument("--keep", type=Path, help="write the run here and leave it (default: a temp folder)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="view-bench-"))
    started = time.perf_counter()
    out = write_run(root, args.records)
    size = sum(p.stat().st_size for p in (out / "dx").rglob("*.jsonl"))
    print(f"wrote {args.records} records ({size / 2**20:.0f} MiB) in {time.perf_counter() - started:.1f} s")
    proc, base = start_viewer(root)
    key = "big/out"

    def link(path: str, **params: object) -> str:
        return base.rstrip("/") + path + "?" + urllib.parse.urlencode({"run": key, "stage": "dx", **params})

    last_page = args.records // 50 - 1
    cases = [
        ("run page, first 50 (cold: builds the index)", link("/run"), None),
        ("run page, first 50", link("/run"), lambda: peer_page(out / "dx", 0)),
        (
            f"run page, page {last_page // 2}",
            link("/run", page=last_page // 2),
            lambda: peer_page(out / "dx", 50_000),
        ),
        (
            "rejected by one reason, page 20",
            link("/run", outcome="rejected", reason="format: too many items", page=20),
            None,
        ),
        ("search a word in 1 record, then again", link("/run", q=RARE), None),
        ("search a word in 1/4 of records, page 10", link("/run", q="胸痛", page=10), None),
        (
            "search a word in 1/4 of records, never asked before",
            None,
            lambda: peer_search(out / "dx", "发热"),
        ),
        (
            "record page (near-duplicate, side by side)",
            link("/record", id="r000102", outcome="rejected"),
            None,
        ),
    ]
    print(f"| request | viewer: first | viewer: median (worst) of {args.repeat} | read whole stage | ratio |")
    print("|---|---|---|---|---|")
    try:
        for label, url, peer in cases:
            if url is None:  # a query never asked before each time: always a scan of the files
                words = [
                    "发热",
                    "咳嗽",
                    "腹痛",
                    "头晕",
                    "乏力",
                    "恶心",
                    "呕吐",
                    "气促",
                    "心悸",
                    "水肿",
                    "黑便",
                ]
                times = [timed(link("/run", q=w))[0] for w in words[: args.repeat + 1]]
                first, rest = times[0], times[1:]
            else:
                first = timed(url)[0]
                rest = [timed(url)[0] for _ in range(args.repeat)]
            peer_s = None
            if peer is not None:
                t0 = time.perf_counter()
                peer()
                peer_s = time.perf_counter() - t0
            median = statistics.median(rest)
            ratio = f"{peer_s / median:,.0f}x" if peer_s else "–"
            peer_text = f"{peer_s * 1000:,.0f} ms" if peer_s else "–"
            print(
                f"| {label} | {first * 1000:,.0f} ms | {median * 1000:,.0f} ms ({max(rest) * 1000:,.0f} ms) "
                f"| {peer_text} | {ratio} |",
                flush=True,
            )
        print(f"\nviewer RSS after these requests: {rss_mib(proc.pid):.0f} MiB")
        if args.compare:
            write_run(root, args.records, "big2", edit=0.5)
            url = base + "compare?" + urllib.parse.urlencode({"a": "big/out", "b": "big2/out"})
            started = time.perf_counter()
            while "Comparing big" in urllib.request.urlopen(url, timeout=600).read().decode():
                time.sleep(1)
            ready = time.perf_counter() - started
            warm = statistics.median(timed(url)[0] for _ in range(args.repeat))
            deep = url + "&sort=id&page=2000"
            print(
                f"compare big ⟷ big2 (half the kept answers changed): ready after {ready:.1f} s "
                f"(shows its progress meanwhile); then a page of 20 in {warm * 1000:,.0f} ms, "
                f"page 2000 by id in {timed(deep)[0] * 1000:,.0f} ms; RSS {rss_mib(proc.pid):.0f} MiB"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if args.keep is None:
            import shutil

            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
