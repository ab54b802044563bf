"""DPO from an SFT adapter: the adapter is both the start and the reference; the reward margin rises."""

from __future__ import annotations

import json

import orjson
import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.train_helpers import FAST, records, tiny_model, write_spec
from trainers.dpo import build_dpo_trainer, train_dpo
from trainers.fit import check_lengths, fit
from trainers.pairs import build_pairs
from trainers.spec import load_spec

WRONG = ["感冒", "胃炎", "偏头痛", "湿疹"]


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory):
    """A stand-in for an SFT adapter: LoRA with random (non-zero) A and B, so it differs from the base."""
    folder = tmp_path_factory.mktemp("sft") / "adapter"
    torch.manual_seed(1)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model()), config).save_pretrained(folder)
    return folder


def student_records() -> list[dict]:
    return [{**r, "diseases": [WRONG[i % 4]], "reason": ["无"]} for i, r in enumerate(records())]


def test_dpo_starts_from_the_sft_adapter_as_reference_and_the_margin_rises(tmp_path, sft_adapter):
    body = f"[dpo]\ninit_adapter = '{sft_adapter}'\nmax_steps = 4\nlearning_rate = 2e-2\nsave_steps = 4\n"
    spec = load_spec(write_spec(tmp_path, body + FAST), ["per_device_train_batch_size=2"], command="dpo")
    pairs = build_pairs(records(), student_records(), spec.prompt_format())
    assert len(pairs) == 8
    pairs = pairs[:4]  # two batches of two, seen twice
    trainer = build_dpo_trainer(spec, pairs, pairs, tmp_path / "out")

    model = trainer.model
    assert set(model.peft_config) == {"default", "ref"}
    start = load_file(sft_adapter / "adapter_model.safetensors")
    for name in ("default", "ref"):  # the policy starts from the adapter; TRL's reference is a copy of it
        weights = get_peft_model_state_dict(model, adapter_name=name)
        assert weights.keys() == start.keys() and all(torch.equal(weights[k], start[k]) for k in start)
    before = trainer.evaluate()["eval_rewards/margins"]
    assert abs(before) < 1e-4  # policy == reference at the start

    summary = fit(trainer, tmp_path / "out", spec, pairs, kind="dpo", given=len(pairs), task="joint")
    (row,) = summary["evaluation"]["checkpoints"]
    assert row["eval_rewards/margins"] > before + 0.05, row
    assert "rewards/margins" in summary["curves"]
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "ref" / "adapter_model.safetensors").is_file()  # the reference, kept beside it


def test_train_dpo_reads_preference_stage_records_and_writes_pairs(tmp_path, sft_adapter):
    stage = tmp_path / "pairs.jsonl"
    rows = [
        {
            **r,
            "chosen": {"reason": r["reason"], "diseases": r["diseases"]},
            "rejected": {"reason": ["无"], "diseases": [w]},
        }
        for r, w in zip(records()[:4], WRONG, strict=True)
    ]
    stage.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    body = f"[dpo]\ninit_adapter = '{sft_adapter}'\nmax_steps = 1\nsave_steps = 1\n"
    spec = load_spec(write_spec(tmp_path, body + FAST), [f"data.pairs=['{stage}']"], command="dpo")
    (summary,) = train_dpo(spec)
    out = tmp_path / "out" / "dpo"
    written = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert [p["id"] for p in written] == [1, 2, 3, 4]
    assert json.loads(written[0]["rejected"][0]["content"])["diseases"] == ["感冒"]
    assert summary["kind"] == "dpo" and summary["records"] == {"pairs": 4, "train": 3, "validation": 1}
    assert json.loads((out / "summary.json").read_text())["steps"] == 1


def test_max_length_cuts_of_chosen_or_rejected_answers_are_counted(tmp_path, sft_adapter):
    body = f"[dpo]\ninit_adapter = '{sft_adapter}'\nmax_steps = 1\n" + FAST
    spec = load_spec(write_spec(tmp_path, body), ["max_length=200"], command="dpo")
    pairs = build_pairs(records(), student_records(), spec.prompt_format())
    trainer = build_dpo_trainer(spec, pairs, [], tmp_path / "out")
    tok = trainer.processing_class
    lengths = [
        max(len(tok.apply_chat_template(p["prompt"] + p[a], tokenize=True, return_dict=True)["input_ids"])
            for a in ("chosen", "rejected"))
        for p in pairs
    ]  # fmt: skip
    expected = sum(n > 200 for n in lengths)
    assert 0 < expected < len(pairs)
    report = check_lengths(spec, "dpo", trainer, len(pairs))
    assert report["train"] == {"examples": 8, "cut": expected, "dropped": 0, "longest": max(lengths)}
