"""LoRA SFT on the tiny random model: the loss falls, only the answer is supervised, adapters round-trip,
checkpoints are scored and resumed, training continues from a given adapter, merge keeps the logits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.errors import SpecError
from generators.medical.format import FORMAT_FILE
from tests.train_helpers import FAST, TEST_SET, logits, records, tiny_model, write_spec
from trainers.data import examples
from trainers.fit import check_lengths
from trainers.merge import merge_adapter
from trainers.modeling import load_adapter
from trainers.sft import build_sft_trainer, train_sft
from trainers.spec import load_spec

JOINT = (
    "[eval]\nhook = 'tests.train_helpers:answer_logprob'\n"
    "metric = 'answer_logprob'\nhigher_is_better = true\n"
    "[sft]\noutput_dir = 'out/joint'\nmax_steps = 10\nlearning_rate = 3e-2\nsave_steps = 5\n" + FAST
)


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    """One 10-step overfit run shared by the tests below: (spec, summary)."""
    folder = tmp_path_factory.mktemp("joint")
    spec = load_spec(write_spec(folder, JOINT))
    (summary,) = train_sft(spec)
    return spec, summary


def test_loss_falls_clearly_on_a_small_overfit_set(joint):
    _, summary = joint
    losses = [loss for _, loss in summary["curves"]["loss"]]
    assert len(losses) == 10
    assert losses[-1] < losses[0] - 2.0, losses
    assert summary["tokens"] > 0 and summary["steps"] == 10
    assert summary["max_length_cuts"]["train"] == {"examples": 6, "cut": 0, "dropped": 0, "longest": 0}


def test_summary_and_loss_curve_are_written_next_to_the_adapter(joint):
    spec, summary = joint
    out = Path(spec.sft.output_dir)
    assert out == spec.path.parent / "out" / "joint"
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "summary.json",
        "loss.png",
        "tokenizer.json",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved["records"] == {"train": 6, "validation": 2}
    assert saved["peak_memory_mb"]["process_rss"] > 0 and saved["train_runtime_s"] > 0
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # the prompt format the adapter learnt, for a predict stage's `format_from`
    assert json.loads((out / FORMAT_FILE).read_text()) == spec.prompt_format().to_dict(["joint"])


def test_every_checkpoint_is_scored_and_the_best_reported(joint):
    _, summary = joint
    rows = summary["evaluation"]["checkpoints"]
    assert [r["step"] for r in rows] == [5, 10]
    assert rows[0]["eval_loss"] != rows[1]["eval_loss"]  # each checkpoint's own weights were loaded
    # The offline-metric hook saw the validation examples and its metric picks the best checkpoint.
    assert all(r["hook_examples"] == 2 for r in rows)
    assert rows[0]["answer_logprob"] != rows[1]["answer_logprob"]
    best = max(rows, key=lambda r: r["answer_logprob"])
    assert summary["evaluation"]["metric"] == "answer_logprob"
    assert summary["evaluation"]["best"]["path"] == best["path"]


def test_a_bad_hook_fails_before_training(tmp_path):
    path = write_spec(tmp_path, "[eval]\nhook = 'tests.train_helpers:nope'\n")
    with pytest.raises(SpecError, match="eval.hook 'tests.train_helpers:nope': cannot import"):
        train_sft(load_spec(path))


def test_only_completion_tokens_carry_loss(tmp_path):
    spec = load_spec(write_spec(tmp_path, "[sft]\nmax_steps = 1\n" + FAST))
    fmt = spec.prompt_format()
    record = {"id": 1, "feature_content": "性别: 男\n主诉: 发热", "diseases": ["感冒"], "reason": ["发热"]}
    example = fmt.example(record, "joint")
    trainer = build_sft_trainer(spec, "joint", [example], [], tmp_path / "out")
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    supervised = (labels != -100).nonzero().flatten()
    # One contiguous run at the end: the assistant answer and its end token, nothing of the prompt.
    assert supervised.tolist() == list(range(int(supervised[0]), len(ids)))
    tok = trainer.processing_class
    answer = example["completion"][0]["content"]
    assert tok.decode(ids[supervised]).startswith(answer)
    prompt_text = tok.decode(ids[: int(supervised[0])])
    assert prompt_text.endswith("<|im_start|>assistant\n") and answer not in prompt_text


def test_adapter_saves_reloads_and_gives_the_same_logits(tmp_path):
    spec = load_spec(write_spec(tmp_path, "[sft]\nmax_steps = 1\nlearning_rate = 3e-2\n" + FAST))
    rows = examples(spec.prompt_format(), records()[:4], "joint")
    trainer = build_sft_trainer(spec, "joint", rows, [], tmp_path / "out")
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    tok = trainer.processing_class
    trained = logits(trainer.model, tok)
    reloaded = logits(load_adapter(tiny_model(), tmp_path / "adapter"), tok)
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_model()), tok)
    assert torch.allclose(trained, reloaded, atol=1e-5)
    assert not torch.allclose(trained, base, atol=1e-3)  # the adapter does something


def test_interrupted_run_resumes_from_its_last_checkpoint(joint):
    spec, _ = joint
    more = load_spec(spec.path, ["max_steps=11"])
    (summary,) = train_sft(more)
    assert summary["resumed_from"].endswith("checkpoint-10")
    assert summary["steps"] == 11
    assert [r["step"] for r in summary["evaluation"]["checkpoints"]] == [5, 10, 11]


def test_continued_training_starts_from_the_given_adapter(joint, tmp_path):
    spec, _ = joint
    start = Path(spec.sft.output_dir)
    given = load_file(start / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in given.items())  # not a fresh LoRA
    # Learning rate 0: whatever the run saves is exactly what it started from.
    path = write_spec(
        tmp_path, f"[sft]\ninit_adapter = '{start}'\nmax_steps = 1\nlearning_rate = 0.0\n" + FAST
    )
    (summary,) = train_sft(load_spec(path))
    continued = load_file(tmp_path / "out" / "sft" / "adapter_model.safetensors")
    assert continued.keys() == given.keys()
    assert all(torch.equal(continued[k], given[k]) for k in given)
    assert summary["init_adapter"] == str(start)


def test_training_refuses_test_set_overlap_before_loading_a_model(tmp_path):
    path = write_spec(tmp_path, f"[test_set]\nfiles = ['{TEST_SET}']\n[sft]\nmax_steps = 1\n")
    with pytest.raises(SpecError, match=r"test_set: 1 training record\(s\) overlap the test set"):
        train_sft(load_spec(path))
    assert not (tmp_path / "out").exists()


def test_merge_gives_the_logits_of_base_plus_adapter(joint, tmp_path):
    spec, _ = joint
    adapter = Path(spec.sft.output_dir)
    merged = merge_adapter(adapter, tmp_path / "merged")
    tok = AutoTokenizer.from_pretrained(merged)
    assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()
    assert (merged / FORMAT_FILE).read_bytes() == (adapter / FORMAT_FILE).read_bytes()
    expected = logits(load_adapter(tiny_model(), adapter), tok)
    got = logits(AutoModelForCausalLM.from_pretrained(merged), tok)
    assert torch.allclose(expected, got, atol=1e-4)
    with pytest.raises(SpecError, match="not empty"):
        merge_adapter(adapter, tmp_path / "merged")


def full_lengths(tokenizer, examples, answer: str = "completion") -> list[int]:
    return [
        len(
            tokenizer.apply_chat_template(e["prompt"] + e[answer], tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
        for e in examples
    ]


def test_max_length_cuts_are_counted_and_warned_once_with_the_numbers(tmp_path, caplog):
    spec = load_spec(write_spec(tmp_path, "[sft]\nmax_steps = 1\n" + FAST), ["max_length=135"])
    rows = examples(spec.prompt_format(), records(), "joint")
    trainer = build_sft_trainer(spec, "joint", rows, rows[:2], tmp_path / "out")
    lengths = full_lengths(trainer.processing_class, rows)
    prompts = [len(p) for p in (trainer.processing_class.apply_chat_template(e["prompt"], tokenize=True,
               return_dict=True, add_generation_prompt=True)["input_ids"] for e in rows)]  # fmt: skip
    dropped = sum(p >= 135 for p in prompts)
    assert 0 < dropped < len(rows) and sum(n > 135 for n in lengths) > dropped  # both kinds of cut
    with caplog.at_level(logging.WARNING, logger="trainers"):
        report = check_lengths(spec, "sft", trainer, len(rows), 2)
    assert report["train"] == {
        "examples": len(rows),
        "cut": sum(n > 135 for n in lengths),
        "dropped": dropped,
        "longest": max(n for n, p in zip(lengths, prompts, strict=True) if p < 135),
    }
    assert report["validation"]["examples"] == 2
    (warning,) = [r.getMessage() for r in caplog.records if "max_length" in r.getMessage()]
    assert (
        f"max_length=135 cuts the end of the answer of {report['train']['cut']} of 8 training examples"
        in warning
    )
    assert f"({dropped} dropped: nothing of the answer left)" in warning and "[sft] max_length" in warning


def test_a_max_length_that_leaves_no_example_stops_naming_the_key(tmp_path):
    spec = load_spec(write_spec(tmp_path, "[sft]\nmax_steps = 1\n" + FAST), ["max_length=100"])
    rows = examples(spec.prompt_format(), records(), "joint")
    trainer = build_sft_trainer(spec, "joint", rows, [], tmp_path / "out")
    expected = r"--set max_length=100: sft.max_length: every training prompt is longer than max_length=100"
    with pytest.raises(SpecError, match=expected):
        check_lengths(spec, "sft", trainer, len(rows))
