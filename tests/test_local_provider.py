"""The embedded `local` provider on the real bundled SmolLM2-135M-Instruct (converted once per session)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engine.errors import Fatal
from engine.providers import local_model
from engine.providers.local import LocalConfig, LocalProvider
from engine.types import ChatRequest

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "max_tokens": 16}


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("local-provider-cache")


@pytest.fixture(scope="session")
def provider(cache_dir: Path) -> Iterator[LocalProvider]:
    """One provider on the bundled model for the whole session: the GGUF is converted here, once.
    One torch thread (the worker's setting, and this thread's for the tests' own forward passes): on a
    shared 2-core machine two threads spin against other processes and run ~5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    prov = LocalProvider("local", LocalConfig(threads=1), cache_dir=cache_dir)
    run(prov.preflight())
    yield prov
    run(prov.aclose())
    torch.set_num_threads(threads)


def test_generates_real_text(provider: LocalProvider) -> None:
    done = run(provider.complete(ChatRequest(FRANCE, dict(GREEDY))))
    assert "Paris" in done.text
    assert done.finish_reason == "stop"
    assert done.usage.prompt_tokens > 10 and 0 < done.usage.completion_tokens <= 16
    assert done.model == "SmolLM2-135M-Instruct" and done.logprobs is None


def test_greedy_is_deterministic(provider: LocalProvider) -> None:
    request = ChatRequest([{"role": "user", "content": "Name three colours."}], dict(GREEDY, logprobs=True))
    first, second = run(provider.complete(request)), run(provider.complete(request))
    assert first.text == second.text
    assert [t.token for t in first.logprobs] == [t.token for t in second.logprobs]


def test_seeded_sample_is_the_same_alone_and_in_a_batch(provider: LocalProvider) -> None:
    def sampled(seed: int) -> ChatRequest:
        messages = [{"role": "user", "content": "Write a sentence about the sea."}]
        return ChatRequest(messages, {"temperature": 1.0, "seed": seed, "max_tokens": 10, "logprobs": True})

    async def in_batch() -> list:
        other = ChatRequest([{"role": "user", "content": "Hi"}], {"temperature": 0.8, "max_tokens": 10})
        return await asyncio.gather(provider.complete(other), provider.complete(sampled(123)))

    alone = run(provider.complete(sampled(123)))
    batched = run(in_batch())[1]
    other_seed = run(provider.complete(sampled(124)))
    assert [t.token for t in alone.logprobs] == [t.token for t in batched.logprobs]
    assert [t.token for t in alone.logprobs] != [t.token for t in other_seed.logprobs]


def test_concurrent_calls_are_batched_while_the_loop_keeps_running(provider: LocalProvider) -> None:
    before = provider.batch_sizes.copy()
    questions = ["What is 2 + 2?", "Name a fruit.", "Say hello in French.", "What colour is the sky?"]

    async def scenario() -> tuple[list, list[float]]:
        ticks: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.02)

        tick_task = asyncio.create_task(ticker())
        requests = [
            ChatRequest([{"role": "user", "content": q}], {"temperature": 0, "max_tokens": 16})
            for q in questions
        ]
        answers = await asyncio.gather(*(provider.complete(r) for r in requests))
        stop.set()
        await tick_task
        return answers, ticks

    answers, ticks = run(scenario())
    assert all(a.text and a.usage.completion_tokens > 0 for a in answers)
    new_batches = provider.batch_sizes - before
    assert max(new_batches) >= 2, f"no batch of more than one request: {dict(new_batches)}"
    elapsed = ticks[-1] - ticks[0]
    largest_gap = max(b - a for a, b in zip(ticks, ticks[1:], strict=False))
    assert len(ticks) >= 10 and largest_gap < elapsed / 3, f"event loop stalled for {largest_gap:.2f} s"


def test_top_logprobs_match_a_direct_forward_pass(provider: LocalProvider) -> None:
    done = run(provider.complete(ChatRequest(FRANCE, {"temperature": 0, "max_tokens": 8, "top_logprobs": 5})))
    entries = done.logprobs
    assert len(entries) == done.usage.completion_tokens
    lm = provider.loaded
    prompt = list(
        lm.tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, tokenize=True)["input_ids"]
    )
    tokens = [e.token for e in entries]
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([prompt + tokens])).logits[0].float()
    expected = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    for j, entry in enumerate(entries):
        ids = [tid for tid, _ in entry.top]
        logprobs = [lp for _, lp in entry.top]
        assert isinstance(entry.token, int) and all(isinstance(i, int) for i in ids)
        assert len(entry.top) == 5 and logprobs == sorted(logprobs, reverse=True)
        assert ids[0] == entry.token  # greedy picks the raw argmax
        assert entry.logprob == pytest.approx(expected[j, entry.token].item(), abs=1e-3)
        assert ids == expected[j].topk(5).indices.tolist()
        assert logprobs == pytest.approx(expected[j].topk(5).values.tolist(), abs=1e-3)

    scored = run(provider.score(FRANCE, tokens, top_k=5))
    assert [s.token for s in scored] == tokens
    assert [s.logprob for s in scored] == pytest.approx([e.logprob for e in entries], abs=1e-3)


def test_score_text_appends_the_end_token(provider: LocalProvider) -> None:
    scored = run(provider.score(FRANCE, "The capital of France is Paris.", top_k=3))
    lm = provider.loaded
    text_ids = lm.tokenizer("The capital of France is Paris.", add_special_tokens=False)["input_ids"]
    assert [s.token for s in scored] == [*text_ids, lm.eos_ids[0]]
    assert all(len(s.top) == 3 and s.logprob <= 0 for s in scored)
    assert scored[-1].logprob > -2.0  # after a full sentence the model expects to stop


def test_constrained_json_in_a_mixed_batch(provider: LocalProvider) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    ask = [{"role": "user", "content": "Describe Paris as JSON with its city name and population."}]
    with_schema = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}
    requests = [
        ChatRequest(ask, {"temperature": 0, "max_tokens": 64, "response_format": with_schema}),
        ChatRequest(ask, {"temperature": 0, "max_tokens": 64, "response_format": {"type": "json_object"}}),
        ChatRequest(ask, {"temperature": 0, "max_tokens": 8}),  # unconstrained row in the same batch
    ]

    async def all_at_once() -> list:
        return await asyncio.gather(*(provider.complete(r) for r in requests))

    constrained, any_json, free = run(all_at_once())
    assert constrained.finish_reason == "stop", constrained.text
    value = json.loads(constrained.text)
    assert list(value) == ["city", "population"]
    assert isinstance(value["city"], str) and isinstance(value["population"], int)
    assert any_json.finish_reason == "stop" and json.loads(any_json.text) is not None
    assert free.usage.completion_tokens <= 8


def test_stop_strings_and_length_limit(provider: LocalProvider) -> None:
    stopped = run(provider.complete(ChatRequest(FRANCE, dict(GREEDY, stop=["Paris"]))))
    assert stopped.finish_reason == "stop" and "Paris" not in stopped.text
    assert stopped.text.startswith("The capital of France is")
    cut = run(provider.complete(ChatRequest(FRANCE, {"temperature": 0, "max_tokens": 3})))
    assert cut.finish_reason == "length" and cut.usage.completion_tokens == 3


def test_estimate_uses_the_real_tokenizer(provider: LocalProvider) -> None:
    request = ChatRequest(FRANCE, {"temperature": 0, "max_tokens": 4})
    done = run(provider.complete(request))
    assert provider.estimate_tokens(request) == done.usage.prompt_tokens + 4


def test_second_load_reuses_the_conversion(provider: LocalProvider, cache_dir: Path, monkeypatch) -> None:
    def no_conversion(*args: object) -> None:
        raise AssertionError("converted the GGUF again")

    monkeypatch.setattr(local_model, "_convert_into", no_conversion)
    again = LocalProvider("again", LocalConfig(threads=1), cache_dir=cache_dir)
    run(again.preflight())
    assert len(list((cache_dir / "models").iterdir())) == 2  # the folder and its lock file
    assert (
        run(again.complete(ChatRequest(FRANCE, dict(GREEDY)))).text
        == run(provider.complete(ChatRequest(FRANCE, dict(GREEDY)))).text
    )
    run(again.aclose())


def test_lora_adapter_changes_the_model(provider: LocalProvider, cache_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = local_model.converted_dir(local_model.bundled_gguf(), cache_dir)
    base = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # not a no-op
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")

    tuned = LocalProvider(
        "tuned", LocalConfig(adapter=str(tmp_path / "adapter"), threads=1), cache_dir=cache_dir
    )
    request = ChatRequest(FRANCE, {"temperature": 0, "max_tokens": 2, "top_logprobs": 3})
    with_adapter = run(tuned.complete(request))
    without = run(provider.complete(request))
    run(tuned.aclose())
    assert with_adapter.model.endswith("adapter")
    assert abs(with_adapter.logprobs[0].top[0][1] - without.logprobs[0].top[0][1]) > 1e-3


def test_missing_model_gives_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    prov = LocalProvider("x", LocalConfig(model=str(missing)), cache_dir=tmp_path)
    with pytest.raises(Fatal) as err:
        run(prov.preflight())
    assert err.value.stop_run and str(missing) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(Fatal, match="does not exist"):  # requests fail the same way, never hang
        run(prov.complete(ChatRequest(FRANCE, dict(GREEDY))))
    run(prov.aclose())


def test_unsupported_params_are_refused_before_any_work(tmp_path: Path) -> None:
    prov = LocalProvider("x", LocalConfig(model=str(tmp_path / "unused")), cache_dir=tmp_path)
    with pytest.raises(Fatal, match="frequency_penalty"):
        run(prov.complete(ChatRequest(FRANCE, {"frequency_penalty": 0.5})))
    with pytest.raises(Fatal, match="response_format"):
        run(
            prov.complete(
                ChatRequest(FRANCE, {"response_format": {"type": "json_schema", "json_schema": {}}})
            )
        )
    assert run(prov.aclose()) is None and prov.batch_sizes == {}


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="batchsize"):
        LocalConfig(batchsize=4)


def test_concurrent_conversions_convert_once(tmp_path: Path, monkeypatch) -> None:
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    calls = []

    def fake_convert(source: Path, out: Path) -> None:
        calls.append(source)
        time.sleep(0.2)  # long enough for the other threads to reach the lock
        (out / "config.json").write_text("{}")
        (out / local_model.DONE_MARKER).write_text("{}")

    monkeypatch.setattr(local_model, "_convert_into", fake_convert)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(local_model.convert_gguf(gguf, tmp_path)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 3
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted(
        [results[0].name, results[0].name + ".lock"]
    )


def test_failed_conversion_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")

    def broken(source: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise Fatal("cannot read GGUF")

    monkeypatch.setattr(local_model, "_convert_into", broken)
    with pytest.raises(Fatal):
        local_model.convert_gguf(gguf, tmp_path)
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_an_abandoned_row_stops_early(provider: LocalProvider) -> None:
    from engine.providers.local_decode import generate_batch
    from engine.providers.local_params import GenParams

    lm = provider.loaded
    prompt = list(
        lm.tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, tokenize=True)["input_ids"]
    )
    steps = iter(range(1000))
    rows = generate_batch(
        lm,
        [prompt, prompt],
        [GenParams(max_tokens=40, temperature=0), GenParams(max_tokens=6, temperature=0)],
        [lambda: next(steps) >= 2, lambda: False],  # asked after each token: gives up after 3
    )
    assert len(rows[0].token_ids) == 3 and len(rows[1].token_ids) == 6


def test_cancelling_a_running_request_tells_the_worker() -> None:
    from engine.providers.local_worker import BatchWorker

    seen: list[bool] = []
    started = threading.Event()

    def handle(jobs) -> None:
        started.set()
        seen.append(jobs[0].abandoned.wait(timeout=10))
        jobs[0].future.set_result("late")

    async def scenario() -> str:
        worker = BatchWorker(handle, batched_kind="generate", batch_size=4, wait_s=0.0, name="test")
        task = asyncio.create_task(worker.submit("generate"))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await worker.close()
        return "closed"

    assert run(scenario()) == "closed" and seen == [True]
