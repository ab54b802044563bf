"""FIRST benchmark: top-k storage size and read speed against FIRST's JSONL layout, trainer step time and
peak memory against plain SFT, and student accuracy / calibration after SFT vs after FIRST.

    python benchmarks/first.py                      # all sections, ~10 min on 2 CPU cores
    python benchmarks/first.py --sections storage   # one section

Data: Self-Instruct's 175 seed tasks (../shared/data/self-instruct-seed) when present, else the test
fixture; the teacher is the bundled SmolLM2-135M-Instruct, scoring each record teacher-forced (k=5).
FIRST's layout (as its released scripts keep teacher outputs): one JSON line per record with the token
ids and, per position, a {token: logprob} dict of the top-k; here keyed by token id.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.jsonl import read_jsonl  # noqa: E402
from trainers.first.smallmodels import bundled_smollm2, tiny_student  # noqa: E402
from trainers.first.topk_store import TopKReader, TopKWriter  # noqa: E402

SEED_TASKS = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "self-instruct-seed" / "seed_tasks.jsonl"
)
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "first_pairs.jsonl"
K = 5


def seed_records(system: str | None = None) -> tuple[list[dict], str]:
    """({key, prompt, completion} records, where from): Self-Instruct's seed tasks as conversations
    (instruction + input -> output; `system` first when given), else the test fixture."""
    if not SEED_TASKS.exists():
        print(f"({SEED_TASKS} absent: using the test fixture)")
        return list(read_jsonl(FIXTURE)), "test fixture"
    records = []
    for task in read_jsonl(SEED_TASKS):
        instance = task["instances"][0]
        user = task["instruction"] + (f"\n\n{instance['input']}" if instance["input"] else "")
        records.append(
            {
                "key": task["id"],
                "prompt": [
                    *([{"role": "system", "content": system}] if system else []),
                    {"role": "user", "content": user},
                ],
                "completion": [{"role": "assistant", "content": instance["output"]}],
            }
        )
    return records, "self-instruct seed tasks"


def load_records(limit: int, max_tokens: int, tokenizer) -> list[dict]:
    from trainers.first.tokens import prompt_completion_ids

    records, source = seed_records(system="Answer briefly.")
    fits = [
        r
        for r in records
        if sum(map(len, prompt_completion_ids(tokenizer, r["prompt"], r["completion"]))) <= max_tokens
    ]
    print(f"data: {source}, {len(fits[:limit])} records of <= {max_tokens} tokens")
    return fits[:limit]


def bench_storage(store: Path, work: Path, min_tokens: int) -> dict:
    """Bytes per token and read speed of raw / packed shards vs FIRST's JSONL, on the same rows."""
    shutil.rmtree(work, ignore_errors=True)  # a kept --work directory: measure fresh files
    reader = TopKReader(store)
    base = [reader[key] for key in reader.keys()]
    copies = max(1, -(-min_tokens // sum(len(ids) for _, ids, _ in base)))
    rows = [(f"{c:04d}-{i:05d}-{'x' * 20}", rec) for c in range(copies) for i, rec in enumerate(base)]
    tokens = sum(len(ids) for _, (_, ids, _) in rows)
    out = {"tokens": tokens, "records": len(rows)}
    for name, packed in (("raw", False), ("packed", True)):
        directory = work / name
        t0 = time.perf_counter()
        with TopKWriter(directory, K, reader.vocab_size, reader.vocab_hash, packed=packed) as writer:
            for key, record in rows:
                writer.append(key, *record)
        out[f"{name}_write_s"] = time.perf_counter() - t0
        out[f"{name}_bytes_per_token"] = sum(p.stat().st_size for p in directory.glob("shard-*")) / tokens
    jsonl = work / "first.jsonl"
    t0 = time.perf_counter()
    with open(jsonl, "w") as f:
        for key, (toks, ids, lps) in rows:
            top = [
                {str(int(i)): float(lp) for i, lp in zip(r_ids, r_lps, strict=True)}
                for r_ids, r_lps in zip(ids, lps, strict=True)
            ]
            f.write(json.dumps({"id": key, "input_ids": toks.tolist(), "top_logprobs": top}) + "\n")
    out["jsonl_write_s"] = time.perf_counter() - t0
    out["jsonl_bytes_per_token"] = jsonl.stat().st_size / tokens

    def jsonl_record(line: bytes, loads) -> tuple:
        rec = loads(line)
        ids = np.array([[int(t) for t in row] for row in rec["top_logprobs"]], dtype=np.int32)
        lps = np.array([list(row.values()) for row in rec["top_logprobs"]], dtype=np.float32)
        return np.asarray(rec["input_ids"], dtype=np.int32), ids, lps

    keys = [key for key, _ in rows]
    sample = random.Random(0).sample(keys, min(2000, len(keys)))
    for name in ("raw", "packed"):
        r = TopKReader(work / name)
        t0 = time.perf_counter()
        n = sum(len(r[key][1]) for key in keys)
        out[f"{name}_scan_tokens_per_s"] = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        n = sum(len(r[key][1]) for key in sample)
        out[f"{name}_random_tokens_per_s"] = n / (time.perf_counter() - t0)
    for name, loads in (("jsonl_json", json.loads), ("jsonl_orjson", orjson.loads)):
        t0 = time.perf_counter()
        with open(jsonl, "rb") as f:
            n = sum(len(jsonl_record(line, loads)[1]) for line in f)
        out[f"{name}_scan_tokens_per_s"] = n / (time.perf_counter() - t0)
    offsets, pos = {}, 0  # JSONL random access, generously with a prebuilt line-offset index
    with open(jsonl, "rb") as f:
        for line in f:
            offsets[orjson.loads(line)["id"]] = pos
            pos += len(line)
    t0 = time.perf_counter()
    with open(jsonl, "rb") as f:
        n = 0
        for key in sample:
            f.seek(offsets[key])
            n += len(jsonl_record(f.readline(), orjson.loads)[1])
    out["jsonl_orjson_random_tokens_per_s"] = n / (time.perf_counter() - t0)
    return out


def _train_child(kind: str, spec: dict, queue) -> None:
    """One trainer in a fresh process, so that its peak memory is its own."""
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(spec["threads"])

    class StepTimer(TrainerCallback):
        """Wall and CPU seconds (all threads) per optimizer step: CPU time is the steadier of the two on a
        machine shared with other work."""

        def __init__(self):
            self.wall, self.cpu, self.start = [], [], (0.0, 0.0)

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.wall.append(time.perf_counter() - self.start[0])
            self.cpu.append(time.process_time() - self.start[1])

    trainer = build_trainer(kind, spec)
    timer = StepTimer()
    trainer.add_callback(timer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    skip = spec.get("warmup", 2)
    result = {"steps": len(timer.wall), "step_wall_s": float(np.median(timer.wall[skip:]))}
    result["step_cpu_s"] = float(np.median(timer.cpu[skip:]))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if spec.get("eval"):
        result["metrics"] = evaluate(trainer, spec)
    queue.put(result)


def build_trainer(kind: str, spec: dict):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from trainers.first.trainer import FirstConfig, FirstTrainer

    sft = dict(spec["sft"], use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no")
    if not torch.cuda.is_available():
        sft["bf16"] = False
    peft = (
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
        if spec["lora"]
        else None
    )
    records = list(read_jsonl(spec["records"]))
    model = AutoModelForCausalLM.from_pretrained(spec["model"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    if kind == "sft":
        dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])
        args = SFTConfig(output_dir=spec["out"], **sft)
        return SFTTrainer(model, args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft)
    first = dict(c=spec["c"], tail_bucket=spec.get("tail", False), ce_weight=spec.get("ce", 0.0))
    args = FirstConfig(output_dir=spec["out"], store=spec["store"], **first, **sft)
    dataset = Dataset.from_list(
        [{"key": r["key"], "prompt": r["prompt"], "completion": r["completion"]} for r in records]
    )
    return FirstTrainer(model, args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft)


def evaluate(trainer, spec: dict) -> dict:
    from transformers import AutoTokenizer

    from trainers.first.collator import FirstCollator
    from trainers.first.metrics import next_token_metrics
    from trainers.first.tokens import tokenise_records

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    held_out = list(read_jsonl(spec["held_out"]))
    collator = FirstCollator(TopKReader(spec["store"]), tokenizer.pad_token_id)
    examples = tokenise_records(tokenizer, held_out)
    batches = [collator(examples[i : i + 4]) for i in range(0, len(examples), 4)]
    return next_token_metrics(trainer.model, batches, spec["c"])


def run_child(kind: str, spec: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_train_child, args=(kind, spec, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(f"{kind} trainer process died (exit code {proc.exitcode})") from None
    proc.join()
    return result


def teacher_reference(store: Path, held_out: list[dict], c: float) -> dict:
    """The teacher's own top-1 accuracy and ECE on the held-out tokens, before and after the transform."""
    import torch

    from trainers.first.calibrate import teacher_ece

    reader = TopKReader(store)
    recs = [reader[r["key"]] for r in held_out]
    lps, ids = np.concatenate([lp for _, _, lp in recs]), np.concatenate([i for _, i, _ in recs])
    gold = np.concatenate([t[1:] for t, _, _ in recs])
    top = torch.as_tensor(lps).argmax(-1, keepdim=True).numpy()
    accuracy = float((np.take_along_axis(ids, top, 1)[:, 0] == gold).mean())
    return {
        "accuracy": accuracy,
        "ece_raw": teacher_ece(lps, ids, gold, None),
        "ece_c": teacher_ece(lps, ids, gold, c),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", default="storage,speed,quality")
    parser.add_argument("--records", type=int, default=120, help="records scored by the teacher")
    parser.add_argument("--max-tokens", type=int, default=256, help="skip longer prompt+completion")
    parser.add_argument("--storage-tokens", type=int, default=200_000, help="rows replicated up to this")
    parser.add_argument("--speed-steps", type=int, default=6, help="timed steps (after 2 warm-up)")
    parser.add_argument("--quality-steps", type=int, default=100)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (1: no OpenMP spin on a shared machine)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--work", type=Path, help="keep the work directory here")
    args = parser.parse_args()
    sections = set(args.sections.split(","))

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.first.calibrate import calibrate_store
    from trainers.first.teacher import write_teacher_store

    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="first-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir = bundled_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    records = load_records(args.records, args.max_tokens, tokenizer)
    split = len(records) * 4 // 5
    for name, part in (("train.jsonl", records[:split]), ("held_out.jsonl", records[split:])):
        (work / name).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in part))
    store = work / "store"
    if not (store / "manifest.json").exists():
        t0 = time.perf_counter()
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
        write_teacher_store(teacher, tokenizer, records, str(store), k=K, packed=True, batch_size=8)
        scored = sum(TopKReader(store).rows(r["key"]) for r in records)
        print(f"teacher scoring: {scored} tokens in {time.perf_counter() - t0:.1f} s")
        del teacher
    results: dict = {"records": len(records), "train": split, "held_out": len(records) - split}
    results["threads"] = args.threads

    if "storage" in sections:
        results["storage"] = bench_storage(store, work / "storage", args.storage_tokens)
        print(json.dumps(results["storage"], indent=1))
    c = calibrate_store(store, 0.2, tail_bucket=False, log=None).c
    results["c"] = c
    common = {
        "threads": args.threads,
        "records": str(work / "train.jsonl"),
        "held_out": str(work / "held_out.jsonl"),
        "store": str(store),
    }
    if "speed" in sections:
        sft = dict(per_device_train_batch_size=4, max_length=args.max_tokens, max_steps=args.speed_steps + 2)
        spec = dict(common, model=str(teacher_dir), lora=True, c=c, sft=dict(sft, learning_rate=1e-4))
        speed = {}
        for name, kind, extra in (
            ("sft", "sft", {}),
            ("first", "first", {}),
            ("first_tail", "first", {"tail": True}),
        ):
            speed[name] = run_child(kind, dict(spec, out=str(work / f"speed-{name}"), **extra))
            print(name, speed[name])
        results["speed"] = speed
    if "quality" in sections:
        student = tiny_student(teacher_dir, work / "student", hidden=128, layers=4)
        sft = dict(per_device_train_batch_size=8, max_length=args.max_tokens, max_steps=args.quality_steps)
        sft |= dict(learning_rate=3e-3, warmup_steps=10, activation_checkpointing=False, seed=0)
        spec = dict(common, model=str(student), lora=False, c=c, sft=sft, eval=True, warmup=1)
        quality = {"teacher": teacher_reference(store, list(read_jsonl(common["held_out"])), c)}
        for name, kind, extra in (
            ("sft", "sft", {}),
            ("first", "first", {}),
            ("first_tail", "first", {"tail": True}),
        ):
            if extra.get("tail"):
                extra["c"] = calibrate_store(store, 0.2, tail_bucket=True, log=None, write=False).c
            quality[name] = run_child(kind, dict(spec, out=str(work / f"quality-{name}"), **extra))
            print(name, quality[name])
        results["quality"] = quality
    print(json.dumps(results, indent=1, default=float))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # a fixed glibc mmap threshold for the trainer processes: with the default dynamic one, freed buffers of
    # varying size ([chunk, vocab] logits) fragment the heap and peak RSS measures the allocator
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "1000000")
    main()
