"""FIRST end to end on the small pair: the bundled SmolLM2-135M teacher scores a store, a tiny random
student with the same tokenizer learns from it through `train first`'s spec (the path SFT and DPO take:
test-set guard, resume, checkpoint scores with held-out KL / agreement / ECE, summary); refusals of
stores and records that do not fit."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from engine.errors import SpecError
from tests.engine_helpers import engine_here
from trainers.first.calibrate import calibrate_store
from trainers.first.collator import FirstCollator
from trainers.first.metrics import next_token_metrics
from trainers.first.smallmodels import bundled_smollm2, tiny_student
from trainers.first.teacher import write_teacher_store
from trainers.first.tokens import tokenise_records
from trainers.first.topk_store import PACKED_BOUND_NATS, TopKReader, TopKWriter, vocab_hash
from trainers.first.trainer import FirstConfig, FirstTrainer, train_first
from trainers.spec import load_spec

PAIRS = Path(__file__).parent / "data" / "first_pairs.jsonl"
HELD_OUT = 8


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


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
    return SimpleNamespace(
        root=root,
        teacher=teacher,
        tokenizer=tokenizer,
        store=root / "store",
        train_file=write_jsonl(root / "train.jsonl", records[:-HELD_OUT]),
        held_out_file=write_jsonl(root / "held_out.jsonl", records[-HELD_OUT:]),
        held_out=records[-HELD_OUT:],
        student=tiny_student(teacher_dir, root / "student"),
    )


def toml(value) -> str:
    return str(value).lower() if isinstance(value, bool) else json.dumps(value)


def first_spec(pair, folder: Path, top: str = "", lora: str = "enabled = false\n", **first) -> Path:
    """A train spec on the tiny student: [data] the pair's train and held-out records, [first] the store
    plus `first` keys (over fast defaults)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = dict(store=str(pair.store), output_dir="out", per_device_train_batch_size=4, learning_rate=5e-3)
    keys |= dict(activation_checkpointing=False, save_strategy="no") | first
    path = folder / "train.toml"
    path.write_text(
        f'base_model = "{pair.student}"\n{top}'
        f'[data]\ntrain = ["{pair.train_file}"]\nvalidation = ["{pair.held_out_file}"]\n'
        f"[lora]\n{lora}[first]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in keys.items()),
        encoding="utf-8",
    )
    return path


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


def test_training_lowers_held_out_kl_raises_agreement_and_reports_them(pair, tmp_path):
    # from a random init the tail bucket is what lifts the teacher's top-k above the rest of the
    # vocabulary; renormalised over the top-k alone, the loss only orders the k ids among themselves
    spec = load_spec(first_spec(pair, tmp_path, tail_bucket=True, max_steps=30), command="first")
    c = orjson.loads((pair.store / "manifest.json").read_bytes())["calibration"]["c"]
    batch = held_out_batch(pair)
    student = AutoModelForCausalLM.from_pretrained(pair.student)
    before = next_token_metrics(student, [batch], c, tail_bucket=True)
    (summary,) = train_first(spec)
    assert summary["c"] == c and summary["kind"] == "first"
    (row,) = summary["evaluation"]["checkpoints"]  # no checkpoints saved: the final weights are scored
    assert row["step"] == 30 and row["path"] == str(tmp_path / "out")
    # the numbers the trainer's chunked evaluation reports are those of the saved model's full logits
    after = next_token_metrics(AutoModelForCausalLM.from_pretrained(tmp_path / "out"), [batch], c, True)
    for name in ("first_kl", "top1_agreement", "accuracy", "ece"):
        assert row[f"eval_{name}"] == pytest.approx(after[name], abs=1e-4), name
    assert row["eval_tokens"] == after["tokens"]
    assert after["first_kl"] < 0.7 * before["first_kl"]
    assert after["top1_agreement"] >= before["top1_agreement"] + 0.05
    losses = [loss for _, loss in summary["curves"]["loss"]]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["evaluation"]["best"]["eval_top1_agreement"] == row["eval_top1_agreement"]
    assert (tmp_path / "out" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_lora_and_ce_checkpoints_are_scored_and_a_longer_run_resumes(pair, tmp_path):
    path = first_spec(
        pair, tmp_path, lora="r = 4\n", c=0.5, ce_weight=0.5, max_steps=2, save_strategy="steps",
        save_steps=1, activation_checkpointing=True,  # TRL's default, with peft
    )  # fmt: skip
    (summary,) = train_first(load_spec(path, command="first"))
    out = tmp_path / "out"
    assert (out / "adapter_config.json").exists() and (out / "summary.json").exists()
    assert summary["c"] == 0.5 and summary["alignment"]["distilled_share"] == 1.0
    rows = summary["evaluation"]["checkpoints"]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["eval_first_kl"] != rows[1]["eval_first_kl"]  # each checkpoint's own weights
    assert all(0 <= r["eval_ece"] <= 1 and 0 <= r["eval_top1_agreement"] <= 1 for r in rows)
    history = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    losses = [e for e in history if "first_ce" in e]
    assert len(losses) == 2 and all(e["loss"] > e["first_kl"] for e in losses)

    (more,) = train_first(load_spec(path, ["max_steps=3"], command="first"))
    assert more["resumed_from"].endswith("checkpoint-2") and more["steps"] == 3
    assert [r["step"] for r in more["evaluation"]["checkpoints"]] == [1, 2, 3]


def test_a_teacher_with_another_tokenizer_is_refused(pair, tmp_path):
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unk>": 0, "hi": 1}, "<unk>")))
    with TopKWriter(tmp_path / "store", 5, 2, vocab_hash(other)) as writer:
        writer.append("pair-00", [0, 1], [[1, 0, 0, 0, 0]], [[-0.1, -3, -np.inf, -np.inf, -np.inf]])
    spec = load_spec(first_spec(pair, tmp_path, c="none"), [f"store='{tmp_path / 'store'}'"], "first")
    with pytest.raises(SpecError, match="differs from the student's.*SFT"):
        train_first(spec)


def test_records_without_teacher_rows_are_refused_before_the_model_loads(pair, tmp_path):
    records = write_jsonl(
        tmp_path / "records.jsonl",
        [orjson.loads(PAIRS.read_bytes().splitlines()[0]), {"key": "nope", "prompt": "a", "completion": "b"}],
    )
    spec = load_spec(first_spec(pair, tmp_path, c="none"), [f"data.train=['{records}']"], "first")
    with pytest.raises(
        SpecError, match=r"--set data.train=.*: data.train: 1 record\(s\) have no teacher top-k .*key='nope'"
    ):
        train_first(spec)
    assert not (tmp_path / "out").exists()


def test_records_overlapping_the_test_set_are_refused_on_their_prompt(pair, tmp_path):
    question = pair.held_out[0]["prompt"][-1]["content"]
    test = write_jsonl(tmp_path / "test.jsonl", [{"id": "t1", "feature_content": question}])
    spec = load_spec(
        first_spec(pair, tmp_path, top=f'[test_set]\nfiles = ["{test}"]\n'),
        [f"data.train=['{pair.held_out_file}']", "data.validation=[]"],
        "first",
    )
    with pytest.raises(SpecError, match=r"test_set: 1 training record\(s\) overlap the test set on 'prompt'"):
        train_first(spec)


def test_a_model_with_unsupported_logit_scaling_is_refused_on_the_first_step(pair, tmp_path):
    # FirstTrainer is usable on its own, TRL style: a model, a FirstConfig, a prompt/completion dataset
    records = [orjson.loads(line) for line in PAIRS.read_bytes().splitlines()[:4]]
    args = FirstConfig(
        output_dir=str(tmp_path), store=str(pair.store), c=None, max_steps=1, report_to="none", use_cpu=True,
        bf16=False,
    )  # fmt: skip
    trainer = FirstTrainer(
        AutoModelForCausalLM.from_pretrained(pair.student),
        args,
        train_dataset=Dataset.from_list(records),
        processing_class=AutoTokenizer.from_pretrained(pair.student),
    )
    trainer.model.config.logit_scale = 2.0  # FIRST would scale, the Qwen2 forward does not: they disagree
    with pytest.raises(SpecError, match="unsupported output scaling"):
        trainer.train()


def test_records_that_do_not_match_the_scored_tokens_are_refused(pair, tmp_path):
    records = [orjson.loads(line) for line in PAIRS.read_bytes().splitlines()[:4]]
    for r in records:  # same keys, other answers: the store's tokens no longer line up
        r["completion"] = [{"role": "assistant", "content": "Completely different words here."}]
    path = write_jsonl(tmp_path / "changed.jsonl", records)
    spec = load_spec(first_spec(pair, tmp_path, c="none"), [f"data.train=['{path}']"], "first")
    with pytest.raises(SpecError, match="first.store: only 0% of the completion tokens .* match the stored"):
        train_first(spec)


def test_records_asked_with_another_prompt_are_counted_and_refused(pair, tmp_path):
    records = [orjson.loads(line) for line in PAIRS.read_bytes().splitlines()[:4]]
    for r in records:  # the same answers under another system prompt: the teacher's rows do not apply
        r["prompt"][0]["content"] = "Answer in three words."
    path = write_jsonl(tmp_path / "reprompted.jsonl", records)
    spec = load_spec(first_spec(pair, tmp_path, c="none"), [f"data.train=['{path}']"], "first")
    with pytest.raises(SpecError, match=r"only 0% .*\(4 examples with other prompt ids than the teacher"):
        train_first(spec)


def test_max_length_cuts_are_counted_and_warned_once(pair, tmp_path, caplog):
    tokenizer = pair.tokenizer
    records = [orjson.loads(line) for line in PAIRS.read_bytes().splitlines()[:-HELD_OUT]]
    lengths = [len(tokenise_records(tokenizer, [r])[0]["input_ids"]) for r in records]
    limit = sorted(lengths)[len(lengths) // 2]  # about half the answers lose their end
    expected = sum(n > limit for n in lengths)
    spec = load_spec(first_spec(pair, tmp_path, c=0.5, max_steps=1), [f"max_length={limit}"], "first")
    with caplog.at_level(logging.WARNING, logger="trainers"):
        (summary,) = train_first(spec)
    cuts = summary["max_length_cuts"]
    assert cuts["max_length"] == limit and cuts["train"]["cut"] == expected > 0
    assert cuts["train"]["longest"] == max(lengths) and cuts["train"]["dropped"] == 0
    warnings = [r.getMessage() for r in caplog.records if "cuts the end of the answer" in r.getMessage()]
    assert len(warnings) == 1 and f"{expected} of {len(records)} training examples" in warnings[0]


def test_engine_train_first_reads_a_spec_and_its_overrides(pair, tmp_path):
    spec = first_spec(pair, tmp_path, lora="r = 4\nalpha = 8\n", c=0.5, max_steps=5)
    proc = engine_here("train", "first", spec, "--set", "max_steps=1", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["c"] == 0.5 and (tmp_path / "out" / "adapter_config.json").exists()
    assert summary["steps"] == 1  # --set beat max_steps = 5
    assert summary["records"] == {
        "train": len(PAIRS.read_text().splitlines()) - HELD_OUT,
        "validation": HELD_OUT,
    }
    assert "first: 1 steps" in proc.stdout and "top1_agreement" in proc.stdout


def test_engine_train_first_names_an_unknown_key_and_its_line(tmp_path):
    spec = tmp_path / "train.toml"
    spec.write_text('[first]\nstore = "s"\ntail_buckett = true\n')
    proc = engine_here("train", "first", spec, check=False)
    expected = f"error: {spec}:3: first.tail_buckett: unknown key (did you mean 'tail_bucket'?)"
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == expected
