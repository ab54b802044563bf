"""FIRST end to end on the small pair: the bundled SmolLM2-135M teacher scores a store, a tiny random
student with the same tokenizer learns from it; refusals of stores that do not fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from engine.errors import SpecError
from engine.topk_store import PACKED_BOUND_NATS, TopKReader, TopKWriter, vocab_hash
from trainers.first.calibrate import calibrate_store
from trainers.first.collator import FirstCollator
from trainers.first.metrics import next_token_metrics
from trainers.first.smallmodels import bundled_smollm2, tiny_student
from trainers.first.teacher import tokenise_records, write_teacher_store
from trainers.first.trainer import FirstConfig, LoraSettings, build_first_trainer, train_first

PAIRS = Path(__file__).parent / "data" / "first_pairs.jsonl"
HELD_OUT = 8


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("first")
    teacher_dir = bundled_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    records = [orjson.loads(line) for line in PAIRS.read_bytes().splitlines()]
    write_teacher_store(teacher, tokenizer, records, str(root / "store"), batch_size=len(records))
    calibrate_store(root / "store", val_fraction=0.25, tail_bucket=True, log=None)
    train_file = root / "train.jsonl"
    train_file.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records[:-HELD_OUT]))
    return SimpleNamespace(
        root=root,
        teacher=teacher,
        tokenizer=tokenizer,
        store=root / "store",
        train_file=train_file,
        held_out=records[-HELD_OUT:],
        student=tiny_student(teacher_dir, root / "student"),
    )


def config(pair, name: str, **overrides) -> FirstConfig:
    sft = dict(per_device_train_batch_size=4, learning_rate=5e-3, logging_steps=1, save_strategy="no")
    sft |= dict(activation_checkpointing=False, max_steps=30, seed=0, use_cpu=not torch.cuda.is_available())
    sft |= overrides.pop("sft", {})
    fields = dict(model=str(pair.student), store=str(pair.store), records=str(pair.train_file), lora=None)
    return FirstConfig(output_dir=str(pair.root / name), sft=sft, **(fields | overrides))


def held_out_batch(pair):
    reader = TopKReader(pair.store)
    collator = FirstCollator(reader, pad_token_id=pair.tokenizer.pad_token_id)
    return collator(tokenise_records(pair.tokenizer, pair.held_out))


def test_collated_rows_are_the_teachers_distribution_over_the_next_token(pair):
    batch = held_out_batch(pair)
    mask = batch["labels"][:, 1:] != -100
    assert mask.sum() > 50
    with torch.no_grad():
        logits = pair.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    teacher_lp = torch.log_softmax(logits[:, :-1][mask].float(), -1)
    ids, stored = batch["teacher_ids"][:, :-1][mask], batch["teacher_logprobs"][:, :-1][mask]
    present = torch.isfinite(stored)
    # row p holds the teacher's log-probs of the distribution over token p + 1, up to the packing bound
    assert (teacher_lp.gather(1, ids) - stored)[present].abs().max() <= PACKED_BOUND_NATS + 2e-3
    assert (batch["labels"][:, 1:][mask] == batch["input_ids"][:, 1:][mask]).all()


def test_short_run_lowers_kd_loss_and_raises_top1_agreement_on_held_out_tokens(pair):
    # from a random init the tail bucket is what lifts the teacher's top-k above the rest of the
    # vocabulary; renormalised over the top-k alone, the loss only orders the k ids among themselves
    trainer = build_first_trainer(config(pair, "full", tail_bucket=True))
    c = trainer.first_loss.c
    assert c == orjson.loads((pair.store / "manifest.json").read_bytes())["calibration"]["c"]
    batch = held_out_batch(pair)
    before = next_token_metrics(trainer.model, [batch], c, tail_bucket=True)
    trainer.train()
    after = next_token_metrics(trainer.model, [batch], c, tail_bucket=True)
    assert after["first_kl"] < 0.7 * before["first_kl"]
    assert after["teacher_agreement"] >= before["teacher_agreement"] + 0.05
    logged = [entry["first_kl"] for entry in trainer.state.log_history if "first_kl" in entry]
    assert np.mean(logged[-5:]) < np.mean(logged[:5])


def test_train_first_with_lora_and_ce_saves_adapter_and_summary(pair):
    cfg = config(
        pair,
        "lora",
        c=0.5,
        ce_weight=0.5,
        lora=LoraSettings(r=4, alpha=8),
        sft=dict(max_steps=2, activation_checkpointing=True),  # TRL's default, with peft
    )
    trainer = train_first(cfg)
    out = Path(cfg.output_dir)
    assert (out / "adapter_config.json").exists()
    summary = json.loads((out / "first_summary.json").read_text())
    assert summary["c"] == 0.5 and summary["alignment"]["distilled_share"] == 1.0
    losses = [e for e in trainer.state.log_history if "first_ce" in e]
    assert len(losses) == 2 and all(e["loss"] > e["first_kl"] for e in losses)


def test_a_teacher_with_another_tokenizer_is_refused(pair, tmp_path):
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unk>": 0, "hi": 1}, "<unk>")))
    with TopKWriter(tmp_path / "store", 5, 2, vocab_hash(other)) as writer:
        writer.append("pair-00", [0, 1], [[1, 0, 0, 0, 0]], [[-0.1, -3, -np.inf, -np.inf, -np.inf]])
    with pytest.raises(SpecError, match="differs from the student's.*SFT"):
        build_first_trainer(config(pair, "refused", store=str(tmp_path / "store"), c=None))


def test_records_without_teacher_rows_are_refused(pair, tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text(
        PAIRS.read_text().splitlines()[0]
        + "\n"
        + json.dumps({"key": "nope", "prompt": "a", "completion": "b"})
    )
    with pytest.raises(SpecError, match=r"records.jsonl:2: key='nope'"):
        build_first_trainer(config(pair, "missing", records=str(records), c=None))


def test_a_model_with_unsupported_logit_scaling_is_refused_on_the_first_step(pair):
    trainer = build_first_trainer(config(pair, "scaled", c=None, sft=dict(max_steps=1)))
    trainer.model.config.logit_scale = 2.0  # FIRST would scale, the Qwen2 forward does not: they disagree
    with pytest.raises(SpecError, match="unsupported output scaling"):
        trainer.train()


def test_records_that_do_not_match_the_scored_tokens_are_refused(pair, tmp_path):
    records = [orjson.loads(line) for line in PAIRS.read_bytes().splitlines()[:4]]
    for r in records:  # same keys, other answers: the store's tokens no longer line up
        r["completion"] = [{"role": "assistant", "content": "Completely different words here."}]
    path = tmp_path / "changed.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    with pytest.raises(SpecError, match="match the stored teacher tokens"):
        train_first(config(pair, "changed", records=str(path), c=None))


def test_engine_train_first_reads_a_spec_and_its_overrides(pair, tmp_path):
    spec = tmp_path / "train.toml"
    spec.write_text(
        f"""[first]
model = "{pair.student}"
store = "{pair.store}"
records = "{pair.train_file}"
output_dir = "out/first"
c = 0.5

[first.lora]
r = 4
alpha = 8

[first.sft]
per_device_train_batch_size = 4
max_steps = 5
save_strategy = "no"
use_cpu = true
"""
    )
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "train", "first", str(spec), "--set", "sft.max_steps=1"],
        cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "first" / "first_summary.json").read_text())
    assert summary["c"] == 0.5 and (tmp_path / "out" / "first" / "adapter_config.json").exists()
    trained = len(PAIRS.read_text().splitlines()) - HELD_OUT
    assert summary["train"]["epoch"] == pytest.approx(4 / trained)  # one step: --set beat max_steps = 5


def test_engine_train_first_names_an_unknown_key(tmp_path):
    spec = tmp_path / "train.toml"
    spec.write_text(
        '[first]\nmodel = "m"\nstore = "s"\nrecords = "r"\noutput_dir = "o"\ntail_buckett = true\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "train", "first", str(spec)],
        cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (
        proc.returncode == 2
        and "first.tail_buckett: unknown key (did you mean 'tail_bucket'?)" in proc.stderr
    )
