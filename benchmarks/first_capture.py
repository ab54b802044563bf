"""Capturing a teacher's top-k into FIRST's store with the engine (`topk_capture`): throughput against the
vLLM-shaped test server and the local provider, with in-process teacher forcing (write_teacher_store) as
the peer; store bytes per token; the tail bucket's precision on confident rows (the new top-1 code against
the previous one); and the calibration table on a reference-labelled split.

    python benchmarks/first_capture.py                         # all sections, ~6 min on 2 CPU cores
    python benchmarks/first_capture.py --sections throughput   # one section

Data: Self-Instruct's 175 seed tasks (../shared/data/self-instruct-seed; human-written reference answers)
as conversational prompt/completion records, else the test fixture. Throughput uses the tiny random
Qwen2 model of the tests (SmolLM2 tokenizer); precision and calibration use the bundled SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.first import seed_records  # noqa: E402
from trainers.first.smallmodels import bundled_smollm2  # noqa: E402
from trainers.first.tokens import prompt_completion_ids  # noqa: E402

K = 5


def load_records() -> tuple[list[dict], str]:
    """The records of benchmarks/first.py (no system message), keyed by `id` as a run's records are."""
    rows, source = seed_records()
    return [{"id": r["key"], "prompt": r["prompt"], "completion": r["completion"]} for r in rows], source


def write_spec(folder: Path, provider: str, tokenizer: Path, rows: list[dict], packed: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "records.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    spec = folder / "spec.toml"
    spec.write_text(
        f'[run]\nname = "capture"\nout = "out"\n\n[providers.teacher]\n{provider}\n\n[[stages]]\n'
        f'name = "topk"\ngenerator = "topk_capture"\nprovider = "teacher"\ninput = "records.jsonl"\n'
        f'tokenizer = "{tokenizer}"\nk = {K}\npacked = {str(packed).lower()}\n'
    )
    return spec


def run_capture(spec: Path) -> dict:
    """`engine run` in a subprocess: wall seconds of the command and of the stage (from the manifest)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(spec), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"engine run failed:\n{proc.stdout}\n{proc.stderr}")
    manifest = orjson.loads((spec.parent / "out" / "manifest.json").read_bytes())
    stage = manifest["stages"]["topk"]
    return {"wall_s": wall, "stage_s": stage["seconds"], "stats": stage["stats"]}


def token_counts(rows: list[dict], tokenizer) -> tuple[int, int]:
    seqs = [prompt_completion_ids(tokenizer, r["prompt"], r["completion"]) for r in rows]
    return sum(len(c) for _, c in seqs), sum(len(p) + len(c) for p, c in seqs)


def bench_throughput(rows: list[dict], work: Path) -> dict:
    """Stored (completion) tokens per second through the stage, against in-process teacher forcing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.server import FakeServer, ModelScorer
    from trainers.first.teacher import write_teacher_store
    from trainers.tiny import build_tiny_model

    model_dir = build_tiny_model(work / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stored, processed = token_counts(rows, tokenizer)
    out = {"records": len(rows), "stored_tokens": stored, "teacher_tokens": processed}
    scorer, answers = ModelScorer(model_dir), {}

    def cached(ids: list[int], k: int) -> list:  # the second run measures the engine alone
        key = (tuple(ids), k)
        if key not in answers:
            answers[key] = scorer(ids, k)
        return answers[key]

    with FakeServer(scorer=cached, keep_bodies=False) as server:
        provider = f'kind = "openai"\nbase_url = "{server.url}"\nmodel = "test-model"\nmax_concurrency = 8'
        out["server"] = run_capture(write_spec(work / "server", provider, model_dir, rows))
        out["engine_only"] = run_capture(write_spec(work / "engine_only", provider, model_dir, rows))
    provider = f'kind = "local"\nmodel = "{model_dir}"\nthreads = 1'
    out["local"] = run_capture(write_spec(work / "local", provider, model_dir, rows))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    keyed = [{**r, "key": str(r["id"])} for r in rows]
    t0 = time.perf_counter()
    write_teacher_store(model, tokenizer, keyed, str(work / "inprocess"), k=K, batch_size=8)
    out["in_process"] = {"stage_s": time.perf_counter() - t0}
    return out


def store_bytes_per_token(store: Path) -> float:
    from trainers.first.topk_store import TopKReader

    reader = TopKReader(store)
    tokens = sum(reader.rows(key) for key in reader.keys())
    return sum(p.stat().st_size for p in store.glob("shard-*")) / tokens


def bench_storage(rows: list[dict], work: Path, teacher: Path) -> dict:
    """Bytes per stored token of the packed and raw stores the stage wrote (bundled 135M teacher)."""
    from trainers.first.topk_store import _Codec

    out = {}
    for packed in (True, False):
        name = "packed" if packed else "raw"
        provider = 'kind = "local"\nmodel = ""\nthreads = 1'
        out[f"{name}_run"] = run_capture(write_spec(work / name, provider, teacher, rows, packed=packed))
        out[f"{name}_bytes_per_token"] = store_bytes_per_token(work / name / "out" / "topk" / "topk")
    for vocab in (49152, 152064):  # rows only, before (12-bit top-1 log-prob) and now (13-bit logit)
        now = _Codec(K, vocab, True).row_bits
        out[f"row_bytes_{vocab}"] = {"before": (now - 1) / 8, "now": now / 8}
    return out


def previous_code(lps: np.ndarray) -> np.ndarray:
    """The previous packed encoding's top-1 (12-bit code of the log-prob itself, step 2^-8; the others as
    gaps below the decoded top-1, as now), for the comparison."""
    from trainers.first.topk_store import GAP_NONE, GAP_STEP

    top = np.clip(np.rint(-lps[:, 0] / 2.0**-8), 0, 4094) * -(2.0**-8)
    gap = np.clip(np.rint((top[:, None] - lps[:, 1:]) / GAP_STEP), 0, GAP_NONE - 1)
    return np.column_stack([top, top[:, None] - gap * GAP_STEP]).astype(np.float32)


def bench_tail(rows: list[dict], teacher: Path) -> dict:
    """Target error (identity transform, tail bucket) from stored rows vs the teacher's float32 rows."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.first.calibrate import teacher_target
    from trainers.first.teacher import score_topk
    from trainers.first.topk_store import _Codec

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher)
    seqs = [prompt_completion_ids(tokenizer, r["prompt"], r["completion"]) for r in rows]
    scored = score_topk(model, seqs, K, batch_size=8)
    lps = np.concatenate([lp for _, _, lp in scored])
    ids = np.concatenate([i for _, i, _ in scored])
    toks = np.concatenate([t[1:] for t, _, _ in scored])
    codec = _Codec(K, 49152, True)
    now = codec.decode(np.frombuffer(codec.encode(toks, ids, lps), np.uint8), len(lps))[2]
    truth = teacher_target(torch.tensor(lps), None, True).double()
    confident = np.exp(lps[:, 0]) > 0.99
    out = {"tokens": len(lps), "confident_tokens": int(confident.sum())}
    for name, decoded in (("previous", previous_code(lps)), ("now", now)):
        target = teacher_target(torch.tensor(decoded), None, True).double()
        kl = (truth.exp() * (truth - target)).sum(-1).numpy()
        tail = (truth - target)[:, -1].abs().numpy()
        for where, rows_ in (("confident", confident), ("all", slice(None))):
            out[f"{name}_{where}_kl"] = float(kl[rows_].mean())
            out[f"{name}_{where}_tail_log_error"] = float(tail[rows_].mean())
    return out


def bench_calibration(rows: list[dict], work: Path, teacher: Path, own: int) -> dict:
    """The calibration table (identity included) on the store captured from reference answers, with and
    without the tail bucket; then on the teacher's own greedy answers to the first `own` prompts."""
    from trainers.first.calibrate import calibrate_store

    store = work / "storage" / "packed" / "out" / "topk" / "topk"
    out = {}
    for tail in (False, True):
        print(f"-- reference answers, tail_bucket={tail}")
        out[f"reference_tail_{tail}"] = calibrate_store(store, 0.3, tail_bucket=tail, write=False).__dict__
    provider = 'kind = "local"\nmodel = ""\nthreads = 1\nbatch_size = 8\nmax_concurrency = 8'
    prompts = [{"id": r["id"], "prompt": r["prompt"]} for r in rows[:own]]
    spec = write_spec(work / "own", provider, teacher, prompts)
    spec.write_text(spec.read_text() + 'mode = "generate"\nparams = { temperature = 0, max_tokens = 64 }\n')
    out["own_run"] = run_capture(spec)
    print("-- the teacher's own greedy answers")
    out["own"] = calibrate_store(spec.parent / "out" / "topk" / "topk", 0.3, write=False).__dict__
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", default="throughput,storage,tail,calibration")
    parser.add_argument("--records", type=int, default=175)
    parser.add_argument("--own-records", type=int, default=60, help="greedy answers, calibration contrast")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    rows, source = load_records()
    rows = rows[: args.records]
    print(f"data: {source}, {len(rows)} records; cpus: {os.cpu_count()}, load: {os.getloadavg()[0]:.1f}")
    results: dict = {"source": source}
    with tempfile.TemporaryDirectory(prefix="first-capture-") as tmp:
        work = Path(tmp)
        teacher = bundled_smollm2()
        if "throughput" in sections:
            results["throughput"] = r = bench_throughput(rows, work / "throughput")
            base = r["in_process"]["stage_s"]
            for name in ("server", "engine_only", "local", "in_process"):
                s = r[name]["stage_s"]
                print(
                    f"{name:10s} stage {s:6.1f} s  {r['stored_tokens'] / s:7.0f} stored tok/s  "
                    f"{r['teacher_tokens'] / s:7.0f} teacher tok/s  ({base / s:.2f}x in-process)"
                    + (f"  command {r[name]['wall_s']:.1f} s" if "wall_s" in r[name] else "")
                )
        if sections & {"storage", "calibration"}:
            results["storage"] = r = bench_storage(rows, work / "storage", teacher)
            print(
                f"bytes/token: packed {r['packed_bytes_per_token']:.2f}, raw {r['raw_bytes_per_token']:.2f}"
            )
            for vocab in (49152, 152064):
                row = r[f"row_bytes_{vocab}"]
                print(f"  rows at vocab {vocab}: {row['before']:.3f} B before, {row['now']:.3f} B now")
        if "tail" in sections:
            results["tail"] = r = bench_tail(rows, teacher)
            print(json.dumps(r, indent=2))
        if "calibration" in sections:
            results["calibration"] = bench_calibration(rows, work, teacher, args.own_records)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
