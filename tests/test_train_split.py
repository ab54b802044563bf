"""Split mode: two adapters (diseases; reasons given the diseases), then `engine run` predicting with both
through a `predict` stage in mode "split", each adapter behind its own `local` provider."""

from __future__ import annotations

import json

import orjson

from generators.medical.format import FORMAT_FILE
from generators.medical.parse import parse_answer
from tests.engine_helpers import engine, outcomes
from tests.train_helpers import FAST, records, tiny_model, write_spec
from trainers.sft import train_sft
from trainers.spec import load_spec

SPLIT = "[sft]\nmode = 'split'\nmax_steps = 2\nlearning_rate = 3e-2\nsave_steps = 2\n" + FAST


def test_split_mode_writes_two_adapters_and_a_split_predict_stage_chains_them(tmp_path):
    spec = load_spec(write_spec(tmp_path, SPLIT))
    summaries = train_sft(spec)
    out = tmp_path / "out" / "sft"
    assert [s["task"] for s in summaries] == ["diseases", "reasons"]
    for task in ("diseases", "reasons"):
        assert (out / task / "adapter_model.safetensors").is_file()
        assert json.loads((out / task / "summary.json").read_text())["task"] == task
        assert json.loads((out / task / FORMAT_FILE).read_text())["tasks"] == ["diseases", "reasons"]
    assert not (out / "adapter_model.safetensors").exists()
    assert (out / FORMAT_FILE).read_bytes() == (out / "diseases" / FORMAT_FILE).read_bytes()

    # The two adapters answer in one predict stage: diseases first, then reasons given those diseases.
    (tmp_path / "test.jsonl").write_bytes(
        b"".join(
            orjson.dumps({"id": r["id"], "feature_content": r["feature_content"]}) + b"\n"
            for r in records()[:2]
        )
    )
    local = 'kind = "local"\nmodel = "{model}"\nadapter = "{adapter}"\nthreads = 1\nmax_new_tokens = 48\n'
    run = tmp_path / "predict.toml"
    run.write_text(
        '[run]\nname = "split"\nout = "run"\n'
        + "[providers.dx]\n" + local.format(model=tiny_model(), adapter=out / "diseases")
        + "[providers.why]\n" + local.format(model=tiny_model(), adapter=out / "reasons")
        + '[[stages]]\nname = "predict"\ngenerator = "predict"\nprovider = "dx"\nreasons_provider = "why"\n'
        + f'input = "test.jsonl"\nformat_from = "{out}"\nmax_items = 1\nmax_chars = 4\nmax_bad_output = 1\n'
    )  # fmt: skip
    engine("run", run, "--quiet")
    kept = {r["id"]: r for r in outcomes(tmp_path / "run", "predict", "kept")}
    assert sorted(kept) == [1, 2]
    for record in kept.values():
        assert [t["turn"] for t in record["turns"]] == ["diseases", "reasons"]  # mode came from the format
        assert record["meta"]["calls"] == 2 and record["meta"]["model"].endswith("reasons")
        # constrained decoding (json_schema): even the tiny random model writes parseable JSON
        assert "parse_error" not in record and record["reason"]
        assert record["diseases"] == parse_answer(record["turns"][0]["answer"], ["diseases"])["diseases"]
