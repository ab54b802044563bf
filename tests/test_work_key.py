"""Everything that changes an answer is part of the work key (new work, shown pending by `status`);
filters, rates, concurrency, timeouts and prices are not (no request, nothing pending)."""

from __future__ import annotations

from pathlib import Path

import orjson

from engine.providers.local import LocalConfig
from engine.providers.openai import OpenAIConfig
from tests.engine_helpers import ANSWER_STAGE, engine_here, outcomes, write_spec

N = 6
STAGE = ANSWER_STAGE + 'params = {temperature = 0.2}\noutput = "answer"\n'


def pending(spec: Path) -> int:
    return orjson.loads(engine_here("status", spec, "--json").stdout)["stages"]["answer"]["counts"]["pending"]


def test_each_answer_changing_setting_is_new_work(tmp_path: Path, fake_server) -> None:
    fake_server.set(models=["test-model", "other-model"])
    spec = write_spec(tmp_path, fake_server.url, cases=N, stages=STAGE, provider="params = {max_tokens = 50}")
    engine_here("run", spec, "--quiet")
    edits = [
        ("temperature = 0.2", "temperature = 0.7"),  # the stage's sampling params
        ('model = "test-model"', 'model = "other-model"'),  # the provider's model
        ("max_tokens = 50", "max_tokens = 60"),  # the provider's default params
        ('output = "answer"', 'output = "reply"'),  # a generator setting
    ]
    for old, new in edits:
        spec.write_text(spec.read_text().replace(old, new))
        assert pending(spec) == N, f"{new}: not new work"
        before = fake_server.requests
        engine_here("run", spec, "--quiet")
        assert fake_server.requests == before + N + 1, f"{new}: not asked again"  # and a preflight
    kept = outcomes(tmp_path / "out", "answer", "kept")
    assert len(kept) == N and all(r["meta"]["model"] == "other-model" and "reply" in r for r in kept)
    sent = fake_server.bodies[-1]
    assert sent["temperature"] == 0.7 and sent["max_tokens"] == 60


def test_filters_rates_timeouts_and_prices_are_not_new_work(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, cases=N, stages=STAGE)
    engine_here("run", spec, "--quiet")
    requests = fake_server.requests
    text = spec.read_text().replace("max_concurrency = 8", "max_concurrency = 3\nrpm = 600\ntpm = 100000")
    text = text.replace('api_key_env = "TEST_ENGINE_KEY"', 'api_key_env = "TEST_ENGINE_KEY"\ntimeout_s = 30')
    text = text.replace("timeout_s = 30", "timeout_s = 30\nprice_in = 1.0\nprice_out = 2.0\nmax_retries = 2")
    text += '\n[[stages.filters]]\nkind = "format"\nrequired = ["answer"]\n'
    spec.write_text(text)
    assert pending(spec) == 0
    engine_here("run", spec, "--quiet")
    assert fake_server.requests == requests  # nothing asked, not even a preflight


def test_each_provider_kind_declares_the_keys_that_change_answers() -> None:
    openai = OpenAIConfig(kind="openai", model="m", rpm=10, timeout_s=5, price_in=1)
    assert openai.answer_settings() == {"model": "m", "params": {}, "extra_body": {}}
    local = LocalConfig(kind="local", model="", adapter="adapters/a", threads=2, batch_size=4)
    settings = local.answer_settings()
    assert settings["adapter"] == "adapters/a" and {"dtype", "max_new_tokens", "params"} <= settings.keys()
    assert not {"threads", "batch_size", "rpm", "timeout_s", "price_in"} & settings.keys()


def test_an_adapter_is_keyed_by_its_files_not_its_folder(tmp_path: Path) -> None:
    """Retraining into the same folder (the usual `out/train/sft`) is new work; the same adapter copied
    elsewhere, or a summary rewritten beside it, is not."""
    adapter = tmp_path / "sft"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 4, "target_modules": ["q_proj", "v_proj"]}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v1")

    def key(folder: Path) -> object:
        return LocalConfig(kind="local", adapter=str(folder)).answer_settings()["adapter"]

    first = key(adapter)
    (adapter / "summary.json").write_text('{"steps": 4}')
    (adapter / "checkpoint-4").mkdir()
    assert key(adapter) == first
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    # peft saves its module lists in set order, and the base model's path (keyed as the `model`)
    (copy / "adapter_config.json").write_text(
        '{"target_modules": ["v_proj", "q_proj"], "r": 4, "base_model_name_or_path": "/elsewhere"}'
    )
    assert key(copy) == first
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v2")
    assert key(adapter) != first
    (copy / "tokenizer_config.json").write_text('{"chat_template": "other"}')
    assert key(copy) != first
    retrained = key(adapter)
    (adapter / "adapter_config.json").write_text(
        '{"r": 4, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]}'
    )
    assert key(adapter) != retrained  # the LoRA scale changes answers with the same weights
    assert key(tmp_path / "not-trained-yet") == str(tmp_path / "not-trained-yet")
