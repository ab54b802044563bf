"""Split mode: two adapters (diseases; reasons given the diseases) and their chained prediction."""

from __future__ import annotations

import json

from tests.train_helpers import FAST, records, tiny_model, write_spec
from trainers.data import Formatter, show
from trainers.predict import generate, load_split, parse_answer, predict_split
from trainers.sft import train_sft
from trainers.spec import load_spec

SPLIT = "[sft]\nmode = 'split'\nmax_steps = 2\nlearning_rate = 3e-2\nsave_steps = 2\n" + FAST


def test_split_mode_writes_two_adapters_and_prediction_chains_them(tmp_path):
    spec = load_spec(write_spec(tmp_path, SPLIT))
    summaries = train_sft(spec)
    out = tmp_path / "out" / "sft"
    assert [s["task"] for s in summaries] == ["diseases", "reasons"]
    for task in ("diseases", "reasons"):
        assert (out / task / "adapter_model.safetensors").is_file()
        assert json.loads((out / task / "summary.json").read_text())["task"] == task
    assert not (out / "adapter_model.safetensors").exists()

    model, tokenizer = load_split(tiny_model(), out)
    fmt = Formatter.from_spec(spec)
    cases = records()[:2]
    results = predict_split(model, tokenizer, cases, fmt, max_new_tokens=12)
    assert [r["id"] for r in results] == [1, 2]

    # Step 1 is the diseases adapter on the diseases prompt.
    model.set_adapter("diseases")
    first = generate(model, tokenizer, [fmt.prompt(r, "diseases") for r in cases], 12)
    assert [r["raw"]["diseases"] for r in results] == first
    # Step 2 is the reasons adapter, prompted with what step 1 answered (raw text when it is not JSON).
    labels = [(parse_answer(t) or {}).get("diseases", t.strip()) for t in first]
    assert [r["diseases"] for r in results] == labels
    model.set_adapter("reasons")
    prompts = [fmt.prompt(r, "reasons", label=label) for r, label in zip(cases, labels, strict=True)]
    assert all(show(label) in p[1]["content"] for label, p in zip(labels, prompts, strict=True))
    assert [r["raw"]["reasons"] for r in results] == generate(model, tokenizer, prompts, 12)
    # The two adapters are different models: the same prompt gets different logits.
    batch = tokenizer("病历", return_tensors="pt")
    outputs = {}
    for name in ("diseases", "reasons"):
        model.set_adapter(name)
        outputs[name] = model(**batch).logits
    assert not outputs["diseases"].allclose(outputs["reasons"])


def test_parse_answer_takes_the_json_object_or_none():
    assert parse_answer('答：{"diseases": ["感冒"]} 完') == {"diseases": ["感冒"]}
    assert parse_answer("不是 JSON") is None
    assert parse_answer("{broken") is None
