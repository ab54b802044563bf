"""SFT and FIRST steps on one GPU: the bundled SmolLM2-135M with LoRA in bf16, one plain process against
DeepSpeed ZeRO-3 on one process, each launched with the command a user types:

    python -m engine train METHOD SPEC                                          (plain)
    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml \\
        --num_processes 1 -m engine train METHOD SPEC                            (ZeRO-3)

Both methods train on the same examples (the fixture answer records with the built-in prompts, ~350
tokens each); FIRST's top-k store is scored first by the same model, teacher-forced. Sized for about
10 minutes on one GPU (each row loads the model in its own processes; `--steps` scales the training).
Results go to docs/benchmarks.md ("Training on a GPU").

    python benchmarks/train_gpu.py               # needs a CUDA GPU, and `pip install deepspeed` for ZeRO-3
    python benchmarks/train_gpu.py --dry-run     # the same plan on CPU: tiny model, fp32, 2 steps; checks
                                                 # the plumbing, measures nothing (ZeRO-3 rows run only
                                                 # when deepspeed imports)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECORDS = ROOT / "tests" / "data" / "train_records.jsonl"
ZERO3 = ROOT / "configs" / "accelerate" / "deepspeed_zero3.yaml"
METHODS = ("sft", "first")
LAUNCHERS = ("plain", "zero3")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(work: Path, dry_run: bool) -> Path:
    """The model, the prompt/completion examples, FIRST's store and the train spec; returns the spec."""
    import orjson
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.jsonl import read_jsonl
    from engine.model_cache import model_cache_dir
    from trainers.base_model import resolve_base_model
    from trainers.data import default_format
    from trainers.first.teacher import write_teacher_store
    from trainers.tiny import build_tiny_model

    model_dir = (
        build_tiny_model(model_cache_dir() / "tiny-qwen2-h64-l2") if dry_run else resolve_base_model("")
    )
    records = list(read_jsonl(RECORDS))
    fmt = default_format()
    examples = [fmt.example(r, "joint") for r in records]
    rows = [{"key": str(r["id"]), **e} for r, e in zip(records, examples, strict=True)]
    (work / "examples.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32 if dry_run else torch.bfloat16
    teacher = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    write_teacher_store(teacher, AutoTokenizer.from_pretrained(model_dir), rows, str(work / "store"))
    del teacher
    training = (
        "per_device_train_batch_size = 8\nlearning_rate = 1e-4\nmax_length = 1024\n"
        "save_strategy = 'no'\nlogging_steps = 1\n"
    )
    spec = work / "train.toml"
    spec.write_text(
        f'base_model = "{model_dir}"\ndtype = "{"float32" if dry_run else "bfloat16"}"\n'
        f'[data]\ntrain = ["{RECORDS}"]\nvalidation_fraction = 0.0\n'
        f"[lora]\nr = 16\nalpha = 32\ndropout = 0.0\n"
        f"[sft]\n{training}"
        f'[first]\nstore = "store"\nc = 0.5\ntail_bucket = true\n{training}',
        encoding="utf-8",
    )
    return spec


def command(method: str, launcher: str, spec: Path, out: Path, steps: int, dry_run: bool) -> list[str]:
    sets = [f"max_steps={steps}", f"output_dir={out}"]
    if method == "first":  # the prompt/completion rows the store was scored on; SFT builds the same
        sets.append(f"data.train=['{spec.parent / 'examples.jsonl'}']")
    if launcher == "zero3" and dry_run:
        sets.append("use_cpu=false")  # DeepSpeed on CPU (its gloo backend): use_cpu would switch it off
    train = ["-m", "engine", "train", method, str(spec), *(x for s in sets for x in ("--set", s))]
    if launcher == "plain":
        return [sys.executable, *train]
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    return [accelerate, "launch", "--config_file", str(ZERO3), "--num_processes", "1",
            "--main_process_port", str(free_port()), *train]  # fmt: skip


def run_row(method: str, launcher: str, spec: Path, steps: int, dry_run: bool, timeout: int) -> dict:
    out = spec.parent / f"{method}-{launcher}"
    row = {"method": method, "launcher": launcher}
    if launcher == "zero3" and importlib.util.find_spec("deepspeed") is None:
        return row | {"status": "skipped: deepspeed not installed (pip install deepspeed)"}
    log = spec.parent / f"{method}-{launcher}.log"
    start = time.perf_counter()
    with open(log, "w") as fh:
        try:
            proc = subprocess.run(
                command(method, launcher, spec, out, steps, dry_run),
                cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
            )  # fmt: skip
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    row["wall_s"] = round(time.perf_counter() - start, 1)
    if code != 0:
        errors = [line for line in log.read_text(errors="replace").splitlines() if "rror" in line]
        return row | {"status": f"failed ({code}): {errors[-1] if errors else '?'} [{log}]"}
    summary = json.loads((out / "summary.json").read_text())
    return row | {
        "status": "ok",
        "steps": summary["steps"],
        "tokens": summary["tokens"],
        "train_s": summary["train_runtime_s"],
        "tokens_per_s": summary["tokens_per_s"],
        "cuda_mb": summary["peak_memory_mb"].get("cuda_allocated"),
        "rss_mb": summary["peak_memory_mb"]["process_rss"],
        "loss": f"{summary['first_loss']:.3f} -> {summary['last_loss']:.3f}",
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| method | launcher | steps | tokens | train s | tokens/s | peak CUDA MB | peak RSS MB | loss | "
        "wall s | vs plain (tokens/s, CUDA MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['launcher']} | {r['status']} |" + " |" * 8)
            continue
        plain = next((p for p in rows if p["method"] == r["method"] and p["launcher"] == "plain"), None)
        ratio = "-"
        if r["launcher"] != "plain" and plain and plain["status"] == "ok" and plain["tokens_per_s"]:
            memory = f"{r['cuda_mb'] / plain['cuda_mb']:.2f}x" if r["cuda_mb"] and plain["cuda_mb"] else "-"
            ratio = f"{r['tokens_per_s'] / plain['tokens_per_s']:.2f}x, {memory}"
        lines.append(
            f"| {r['method']} | {r['launcher']} | {r['steps']} | {r['tokens']} | {r['train_s']} | "
            f"{r['tokens_per_s']} | {r['cuda_mb'] or '-'} | {r['rss_mb']} | {r['loss']} | {r['wall_s']} | "
            f"{ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--dry-run", action="store_true", help="on CPU: tiny model, fp32, 2 steps")
    parser.add_argument(
        "--steps", type=int, default=None, help="optimizer steps per row (default 60; dry run 2)"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--launchers", nargs="+", default=list(LAUNCHERS), choices=LAUNCHERS)
    parser.add_argument("--timeout", type=int, default=240, help="seconds per row before it counts as failed")
    parser.add_argument("--work", type=Path, default=None, help="folder for the spec, store, outputs, logs")
    args = parser.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        fail("no CUDA GPU visible: this benchmark measures GPU training; --dry-run runs its plan on CPU")
    steps = args.steps or (2 if args.dry_run else 60)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-train-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"{device}; torch {torch.__version__}; work folder {work}", flush=True)
    spec = prepare(work, args.dry_run)
    rows = []
    for method in args.methods:
        for launcher in args.launchers:
            rows.append(run_row(method, launcher, spec, steps, args.dry_run, args.timeout))
            print(json.dumps(rows[-1]), flush=True)
    (work / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
