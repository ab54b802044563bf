"""LoRA SFT step speed (tokens/s) and peak memory on CPU: our trainer against bare TRL and a plain loop.

    python benchmarks/train_step.py                       # tiny model and SmolLM2-135M, 6 steps each
    python benchmarks/train_step.py --models tiny --steps 12

Each (model, variant) runs in its own process so peak RSS is its own. Variants, all on the same examples
(fixture records with the built-in prompts, batch 4, LoRA r=8 on all linear layers, fp32, no
activation checkpointing):
  trainers  build_sft_trainer + trainer.train (what `engine train sft` runs)
  trl       SFTTrainer built by hand from the same dataset and SFTConfig (the peer: our overhead)
  loop      peft model + AdamW + TRL's collator in a bare PyTorch loop (a floor for the Trainer)
Tokens are non-padding tokens; the first step (warm-up) is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECORDS = ROOT / "tests" / "data" / "train_records.jsonl"
VARIANTS = ("trainers", "trl", "loop")
SFT_KEYS = (
    "activation_checkpointing = false\nper_device_train_batch_size = 4\nmax_length = 1024\n"
    "learning_rate = 1e-4\nsave_strategy = 'no'\n"
)


def write_spec(folder: Path, base: str, steps: int) -> Path:
    path = folder / "train.toml"
    path.write_text(
        f'base_model = "{base}"\n[data]\ntrain = ["{RECORDS}"]\nvalidation_fraction = 0.0\n'
        f"[lora]\nr = 8\nalpha = 16\ndropout = 0.0\n[sft]\nmax_steps = {steps}\n{SFT_KEYS}"
    )
    return path


def base_path(model: str, folder: Path) -> str:
    if model == "tiny":
        from engine.model_cache import model_cache_dir
        from trainers.tiny import build_tiny_model

        return str(build_tiny_model(model_cache_dir() / "tiny-qwen2-h64-l2"))
    return ""  # the bundled SmolLM2-135M


def bare_trl_trainer(spec, examples: list[dict], out: Path):
    """The peer: TRL's SFTTrainer set up the way its documentation shows, none of our loaders."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from trainers.base_model import resolve_base_model
    from trainers.sft import SftConfig
    from trainers.spec import own_fields

    folder = resolve_base_model(spec.base_model)
    ours = own_fields(SftConfig)  # mode, init_adapter: keys of ours TRL's SFTConfig does not take
    trl_args = {k: v for k, v in spec.trainer_args("sft").items() if k not in ours}
    args = SFTConfig(output_dir=str(out), **trl_args)
    return SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder),
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=AutoTokenizer.from_pretrained(folder),
        peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"),
    )


def run_child(model: str, variant: str, steps: int) -> dict:
    import torch
    from transformers import TrainerCallback

    from trainers.data import examples, read_sources
    from trainers.sft import build_sft_trainer
    from trainers.spec import load_spec

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="bench-train-"))
    spec = load_spec(write_spec(folder, base_path(model, folder), steps))
    records = read_sources(spec, spec.data.train, "data.train")
    train_rows = examples(spec.prompt_format(), (records * 4)[: 4 * steps], "joint")
    marks: list[tuple[float, float, int]] = []
    if variant == "trl":
        trainer = bare_trl_trainer(spec, train_rows, folder / "out")
    else:
        trainer = build_sft_trainer(spec, "joint", train_rows, [], folder / "out")

    if variant == "loop":
        model_ = trainer.model
        optimizer = torch.optim.AdamW([p for p in model_.parameters() if p.requires_grad], lr=1e-4)
        rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
        model_.train()
        seen = 0
        for step in range(steps):
            batch = trainer.data_collator(rows[4 * step : 4 * step + 4])
            loss = model_(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            seen += int(batch["attention_mask"].sum())
            marks.append((time.perf_counter(), time.process_time(), seen))
    else:

        class Marks(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "num_tokens" in logs:
                    marks.append((time.perf_counter(), time.process_time(), int(logs["num_tokens"])))

        trainer.add_callback(Marks())
        trainer.train()
    (t0, c0, n0), (t1, c1, n1) = marks[0], marks[-1]
    return {
        "model": model,
        "variant": variant,
        "timed_steps": len(marks) - 1,
        "tokens": n1 - n0,
        "tokens_per_s": round((n1 - n0) / (t1 - t0), 1),
        "tokens_per_cpu_s": round((n1 - n0) / (c1 - c0), 1),
        "s_per_step": round((t1 - t0) / (len(marks) - 1), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_child(*args.child, args.steps)))
        return
    print(f"{os.cpu_count()} cpus; load average before: {os.getloadavg()}", flush=True)
    results = []
    for model in args.models:
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--steps", str(args.steps), "--child", model, variant]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:]))
            print(json.dumps(results[-1]), flush=True)
    print(f"load average after: {os.getloadavg()}")
    print(
        "\n| model | variant | tokens/s (wall) | tokens per CPU-s | s/step | peak RSS MB "
        "| vs trl (wall, CPU) |"
        "\n|---|---|---|---|---|---|---|"
    )
    for r in results:
        peer = next((p for p in results if p["model"] == r["model"] and p["variant"] == "trl"), None)
        ratio = "-"
        if peer:
            ratio = f"{r['tokens_per_s'] / peer['tokens_per_s']:.2f}x, "
            ratio += f"{r['tokens_per_cpu_s'] / peer['tokens_per_cpu_s']:.2f}x"
        print(
            f"| {r['model']} | {r['variant']} | {r['tokens_per_s']} | {r['tokens_per_cpu_s']} | "
            f"{r['s_per_step']} | {r['peak_rss_mb']} | {ratio} |"
        )


if __name__ == "__main__":
    main()
