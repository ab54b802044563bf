"""The `topk_capture` stage end to end: a tiny real model behind a vLLM-shaped test server (and behind the
local provider) fills FIRST's store with the rows in-process teacher forcing writes; SIGKILL and resume,
429/500, shards, stale records and servers that cannot score token ids."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.errors import SpecError
from engine.pipeline import Pipeline
from engine.spec import load_spec
from tests.engine_helpers import ROOT, engine_here, read_lines
from tests.server import FakeServer, ModelScorer
from tests.test_disk_full import run_limited
from trainers.first.cli import main as calibrate_main
from trainers.first.teacher import score_topk, write_teacher_store
from trainers.first.tokens import prompt_completion_ids
from trainers.first.topk_store import GAP_STEP, PACKED_BOUND_NATS, TopKReader, prompt_digest
from trainers.tiny import build_tiny_model

PAIRS = Path(__file__).parent / "data" / "first_pairs.jsonl"
STAGE = "teacher_topk"
PLAIN = [  # plain-text records: the completion gets the end-of-sequence token, as TRL adds it
    {"id": 9001, "prompt": "The capital of Italy is", "completion": " Rome."},
    {"id": 9002, "prompt": "Two plus two is", "completion": " four."},
]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("capture") / "teacher")
    return folder, ModelScorer(folder)


def records(n: int | None = None) -> list[dict]:
    pairs = [orjson.loads(line) for line in PAIRS.read_bytes().splitlines()]
    rows = [{"id": p["key"], "prompt": p["prompt"], "completion": p["completion"]} for p in pairs] + PLAIN
    for i in range(len(rows), n or 0):  # more records: variants of the same conversations
        base = rows[i % len(pairs)]
        prompt = [
            *base["prompt"][:-1],
            {**base["prompt"][-1], "content": f"{base['prompt'][-1]['content']} ({i})"},
        ]
        rows.append({**base, "id": f"extra-{i}", "prompt": prompt})
    return rows[:n]


def capture_spec(folder: Path, provider: str, tokenizer: Path, rows: list[dict], stage: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "records.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    spec = folder / "spec.toml"
    spec.write_text(
        f"""[run]
name = "capture"
out = "out"

[providers.teacher]
{provider}

[[stages]]
name = "{STAGE}"
generator = "topk_capture"
provider = "teacher"
input = "records.jsonl"
tokenizer = "{tokenizer}"
k = 5
{stage}
"""
    )
    return spec


def served(url: str, concurrency: int = 8, extra: str = "") -> str:
    return (
        f'kind = "openai"\nbase_url = "{url}"\nmodel = "test-model"\nmax_concurrency = {concurrency}\n{extra}'
    )


def run_in_process(spec: Path) -> dict:
    """`engine run` without a subprocess (for checks that need no crash): the run's manifest."""
    return asyncio.run(Pipeline(load_spec(spec), progress=False).run())


def store_of(folder: Path) -> Path:
    return folder / "out" / STAGE / "topk"


def journal_ok(folder: Path) -> list[dict]:
    lines = []
    for path in sorted((folder / "out" / STAGE / "raw").glob("shard-*.jsonl")):
        lines += read_lines(path)
    return [e for e in lines if e["status"] == "ok"]


def index_keys(store: Path) -> list[str]:
    return [
        orjson.loads(line)["key"]
        for p in sorted(store.glob("shard-*.idx"))
        for line in p.read_bytes().splitlines()
    ]


def assert_equals_in_process_scoring(store: Path, model_dir: Path, rows: list[dict], tmp_path: Path) -> None:
    """The captured store holds, for every record, the rows write_teacher_store writes for the same model,
    tokens and prompt digests exactly, log-probs within the packed bound of the model's own float32 rows."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    keyed = [{**r, "key": str(r["id"])} for r in rows]
    write_teacher_store(model, tokenizer, keyed, str(tmp_path / "reference"), batch_size=4)
    captured, reference = TopKReader(store), TopKReader(tmp_path / "reference")
    assert sorted(captured.keys()) == sorted(reference.keys()) == sorted(str(r["id"]) for r in rows)
    seqs = [prompt_completion_ids(tokenizer, r["prompt"], r["completion"]) for r in rows]
    truth = score_topk(model, seqs, k=5, batch_size=1)
    for row, (prompt, _), (true_tokens, true_ids, true_lps) in zip(rows, seqs, truth, strict=True):
        key = str(row["id"])
        (tokens, ids, lps), (ref_tokens, ref_ids, ref_lps) = captured[key], reference[key]
        assert np.array_equal(tokens, ref_tokens) and np.array_equal(tokens, true_tokens)
        assert np.array_equal(ids, ref_ids) and np.array_equal(ids, true_ids)
        assert np.abs(lps - true_lps).max() <= PACKED_BOUND_NATS + 1e-4  # fp32 noise of another batching
        assert np.abs(lps - ref_lps).max() <= GAP_STEP + 1e-4  # at most one code step apart
        assert captured.prompt_digest(key) == reference.prompt_digest(key) == prompt_digest(prompt)


def test_capture_through_a_vllm_shaped_server_equals_in_process_teacher_forcing(teacher, tmp_path):
    model_dir, scorer = teacher
    rows = records()
    with FakeServer(scorer=scorer) as server:
        spec = capture_spec(tmp_path / "run", served(server.url), model_dir, rows)
        engine_here("run", spec, "--quiet")
        bodies = [b for b in server.bodies if "prompt_logprobs" in b]
    assert len(bodies) == len(rows)
    assert all(b["max_tokens"] == 1 and b["prompt_logprobs"] == 5 for b in bodies)
    assert all(isinstance(b["prompt"], list) and isinstance(b["prompt"][0], int) for b in bodies)
    assert_equals_in_process_scoring(store_of(tmp_path / "run"), model_dir, rows, tmp_path)
    ok = journal_ok(tmp_path / "run")
    assert sorted(str(e["id"]) for e in ok) == sorted(index_keys(store_of(tmp_path / "run")))
    store = str(store_of(tmp_path / "run"))  # the folder calibrate takes
    assert calibrate_main(["distill", "calibrate", store, "--val-fraction", "0.5", "--dry-run"]) == 0


def test_capture_with_the_local_provider_equals_in_process_teacher_forcing(teacher, tmp_path):
    model_dir, _ = teacher
    rows = records(12)
    spec = capture_spec(tmp_path / "run", f'kind = "local"\nmodel = "{model_dir}"', model_dir, rows)
    engine_here("run", spec, "--quiet")
    assert_equals_in_process_scoring(store_of(tmp_path / "run"), model_dir, rows, tmp_path)
    # the store trains: `train first` on the same records, keyed by their id
    train = tmp_path / "train.toml"
    train.write_text(
        f'base_model = "{model_dir}"\n[data]\ntrain = ["{tmp_path / "run" / "records.jsonl"}"]\n'
        f'[lora]\nenabled = false\n[first]\nstore = "{store_of(tmp_path / "run")}"\nkey_field = "id"\n'
        'c = "none"\noutput_dir = "out"\nmax_steps = 1\nsave_strategy = "no"\n'
        "activation_checkpointing = false\n"
    )
    engine_here("train", "first", train)
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert summary["steps"] == 1 and summary["alignment"]["distilled_share"] == 1
    assert summary["alignment"]["prompt_mismatches"] == 0


def test_sigkill_at_any_moment_then_resume_leaves_every_record_once_in_store_and_journal(teacher, tmp_path):
    model_dir, scorer = teacher
    n = 30
    folder = tmp_path / "run"
    with FakeServer(scorer=scorer, latency_s=0.03) as server:
        spec = capture_spec(folder, served(server.url, concurrency=4), model_dir, records(n))
        journal = folder / "out" / STAGE / "raw" / "shard-00000.jsonl"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        for stop_at in (3, 12, 21):
            proc = subprocess.Popen(
                [sys.executable, "-m", "engine", "run", str(spec), "--quiet"], cwd=ROOT, env=env
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(read_lines(journal)) < stop_at:
                assert proc.poll() is None, "the run ended before it could be killed"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            store = store_of(folder)
            with open(store / "shard-00000.bin", "ab") as f:  # what a kill in the middle of an append leaves
                f.write(b"\x01" * 33)
            with open(store / "shard-00000.idx", "ab") as f:
                f.write(b'{"key": "torn')
        engine_here("run", spec, "--quiet")
        scored = Counter(tuple(b["prompt"]) for b in server.bodies if "prompt_logprobs" in b)
    ok = journal_ok(folder)
    keys = index_keys(store_of(folder))
    assert Counter(keys) == Counter({str(r["id"]): 1 for r in records(n)})  # every record stored once
    assert sorted(str(e["id"]) for e in ok) == sorted(keys)  # journal and store agree
    assert len(TopKReader(store_of(folder))) == n
    # a record is requested again only when it was in flight at a kill: at most the window each time
    assert sum(scored.values()) - len(scored) <= 3 * 4


def test_rows_stored_before_a_crash_are_reused_and_stale_rows_are_refused(teacher, tmp_path):
    model_dir, scorer = teacher
    folder, rows = tmp_path / "run", records(6)
    with FakeServer(scorer=scorer) as server:
        spec = capture_spec(folder, served(server.url), model_dir, rows)
        engine_here("run", spec, "--quiet")
        journal = folder / "out" / STAGE / "raw" / "shard-00000.jsonl"
        lines = journal.read_bytes().splitlines(keepends=True)
        journal.write_bytes(b"".join(lines[:-2]))  # killed after two stores, before their journal lines
        lost = [orjson.loads(line)["id"] for line in lines[-2:]]
        changed = next(r for r in rows if r["id"] not in lost)
        changed["prompt"][0]["content"] = "Answer in three words."  # same id, another prompt: new work
        capture_spec(folder, served(server.url), model_dir, rows)
        server.reset_counts()
        assert engine_here("run", spec, "--quiet", check=False).returncode == 3  # the changed record failed
        assert not [b for b in server.bodies if "prompt_logprobs" in b]  # nothing scored twice
    ok = {e["id"]: e for e in journal_ok(folder)}
    assert sorted(i for i, e in ok.items() if e["record"]["topk"].get("reused")) == sorted(lost)
    failed = read_lines(folder / "out" / STAGE / "failed" / "shard-00000.jsonl")
    assert [f["id"] for f in failed] == [changed["id"]]
    assert "already in" in failed[0]["message"] and "other token ids" in failed[0]["message"]
    assert Counter(index_keys(store_of(folder))) == Counter({str(r["id"]): 1 for r in rows})


def pending(spec: Path) -> int:
    return orjson.loads(engine_here("status", spec, "--json").stdout)["stages"][STAGE]["counts"]["pending"]


def test_what_changes_the_rows_is_new_work_and_another_teacher_is_refused_by_the_store(teacher, tmp_path):
    model_dir, scorer = teacher
    folder, rows = tmp_path / "run", records(3)
    moved = shutil.copytree(model_dir, tmp_path / "moved")  # the same tokenizer bytes in another folder
    with FakeServer(scorer=scorer, models=["test-model", "other-teacher"]) as server:
        spec = capture_spec(folder, served(server.url), model_dir, rows)
        assert run_in_process(spec)["status"] == "complete"
        text = spec.read_text()
        for old, new in (("k = 5", "k = 3"), ("k = 5", 'k = 5\nmode = "generate"')):
            spec.write_text(text.replace(old, new))
            assert pending(spec) == len(rows), f"{new}: not new work"
        spec.write_text(text.replace(str(model_dir), str(moved)))
        assert pending(spec) == 0  # the tokenizer counts by its bytes, not its path
        spec.write_text(text.replace('"test-model"', '"other-teacher"'))
        assert pending(spec) == len(rows)
        requests = server.requests
        with pytest.raises(SpecError, match="captured with other settings"):
            run_in_process(spec)  # another teacher's rows never join this store
        assert server.requests == requests  # refused before anything was sent
    assert len(TopKReader(store_of(folder))) == len(rows)


def test_429_and_500_are_retried_until_every_record_is_stored(teacher, tmp_path):
    model_dir, scorer = teacher
    rows = records(10)
    with FakeServer(scorer=scorer, seed=3, retry_after=0.05) as server:
        spec = capture_spec(tmp_path / "run", served(server.url, extra="max_retries = 12"), model_dir, rows)
        server.set(fail_prob={429: 0.3, 500: 0.1})
        engine_here("run", spec, "--quiet")
        statuses = server.status_counts
    assert statuses[429] and statuses[500]
    assert len(journal_ok(tmp_path / "run")) == len(rows) == len(TopKReader(store_of(tmp_path / "run")))


def test_capture_requests_are_in_the_spend_ledger_and_stop_at_the_budget(teacher, tmp_path):
    model_dir, scorer = teacher
    folder, rows = tmp_path / "run", records(10)
    with FakeServer(scorer=scorer) as server:
        spec = capture_spec(folder, served(server.url, concurrency=1), model_dir, rows)
        spec.write_text(spec.read_text().replace('out = "out"', 'out = "out"\nmax_tokens = 150'))
        first = engine_here("run", spec, "--quiet", check=False)
        assert first.returncode == 1 and "budget reached" in first.stderr
        scored = [b for b in server.bodies if "prompt_logprobs" in b]
        ledger = read_lines(folder / "out" / "spend" / "shard-00000.jsonl")
        assert len(ledger) == server.requests  # the preflight and every /completions request
        sent = [line for line in ledger if line["attempt"] >= 1]
        assert sum(line["prompt_tokens"] for line in sent) == sum(len(b["prompt"]) for b in scored)
        assert 0 < len(journal_ok(folder)) == len(index_keys(store_of(folder))) < len(rows)
        spec.write_text(spec.read_text().replace("max_tokens = 150", "max_tokens = 100000"))
        engine_here("run", spec, "--quiet")
    assert Counter(index_keys(store_of(folder))) == Counter({str(r["id"]): 1 for r in rows})


def test_shards_write_their_own_store_shard_and_read_as_one_store(teacher, tmp_path):
    model_dir, scorer = teacher
    rows = records(16)
    with FakeServer(scorer=scorer) as server:
        spec = capture_spec(tmp_path / "run", served(server.url), model_dir, rows)
        engine_here("run", spec, "--shard", "1/2", "--quiet")
        engine_here("run", spec, "--shard", "2/2", "--quiet")
    store = store_of(tmp_path / "run")
    per_shard = [len((store / f"shard-{i:05d}.idx").read_bytes().splitlines()) for i in (0, 1)]
    assert all(per_shard) and sum(per_shard) == len(rows)
    assert sorted(TopKReader(store).keys()) == sorted(str(r["id"]) for r in rows)


def test_a_server_without_prompt_logprobs_stops_the_run_and_names_sft(teacher, tmp_path):
    model_dir, _ = teacher
    with FakeServer() as server:  # answers /v1/completions, but without prompt_logprobs (a hosted API)
        spec = capture_spec(tmp_path / "run", served(server.url), model_dir, records(5))
        status = run_in_process(spec)["status"]
    assert "without prompt_logprobs" in status and "SFT" in status
    assert journal_ok(tmp_path / "run") == [] and len(TopKReader(store_of(tmp_path / "run"))) == 0


def test_a_base_model_without_a_chat_template_passes_the_preflight_on_the_completions_api(teacher, tmp_path):
    """vLLM serving a base model answers chat requests with a 400. A capture only asks /completions, so its
    preflight does too; a stage that chats with the same server still stops at its preflight."""
    model_dir, scorer = teacher
    rows = records(3)
    with FakeServer(scorer=scorer, chat_template=False) as server:
        engine_here("run", capture_spec(tmp_path / "run", served(server.url), model_dir, rows), "--quiet")
        assert server.bodies[0] == {"model": "test-model", "prompt": "ping", "max_tokens": 1}
        assert not any("messages" in b for b in server.bodies) and server.status_counts[400] == 0
        chat = capture_spec(tmp_path / "chat", served(server.url), model_dir, rows, 'mode = "generate"')
        stopped = engine_here("run", chat, "--quiet", check=False)
    assert len(TopKReader(store_of(tmp_path / "run"))) == len(rows)
    assert stopped.returncode == 1 and "failed its preflight" in stopped.stderr
    assert "chat template" in stopped.stderr


def test_a_teacher_with_another_vocabulary_is_refused(teacher, tmp_path):
    model_dir, scorer = teacher

    def foreign(ids: list[int], k: int) -> list:
        rows = scorer(ids, k)
        for entry in rows[1:]:
            for value in entry.values():
                value["decoded_token"] = "<other>"  # the teacher's vocabulary gives our ids other text
        return rows

    with FakeServer(scorer=foreign) as server:
        spec = capture_spec(tmp_path / "run", served(server.url), model_dir, records(3))
        status = run_in_process(spec)["status"]
    assert "decodes the student's token ids into other text" in status and "SFT" in status
    assert len(TopKReader(store_of(tmp_path / "run"))) == 0


def test_generation_time_logprobs_with_token_ids_fill_the_store(teacher, tmp_path, fake_server):
    # the test server's chat answers echo the prompt, with fake ids below 50000 when asked for ids
    tokenizer, _ = teacher
    rows = [{"id": f"g{i}", "prompt": [{"role": "user", "content": f"Say {i} things"}]} for i in range(4)]
    spec = capture_spec(
        tmp_path / "run", served(fake_server.url), tokenizer, rows, 'mode = "generate"\nvocab_size = 50000'
    )
    assert run_in_process(spec)["status"] == "complete"
    body = next(b for b in fake_server.bodies if "messages" in b and b.get("top_logprobs"))
    assert body["logprobs"] is True and body["return_tokens_as_token_ids"] is True
    reader = TopKReader(store_of(tmp_path / "run"))
    for entry in journal_ok(tmp_path / "run"):
        tokens, ids, _ = reader[entry["id"]]
        assert entry["record"]["completion"][0]["role"] == "assistant"
        assert (
            len(tokens) - 1
            == entry["record"]["topk"]["tokens"]
            == entry["record"]["meta"]["usage"]["completion_tokens"]
        )
        assert (ids[:, 0] == tokens[1:]).all()  # the fake server ranks the chosen token first
    assert len(reader) == 4
    journal = tmp_path / "run" / "out" / STAGE / "raw" / "shard-00000.jsonl"
    journal.write_bytes(b"".join(journal.read_bytes().splitlines(keepends=True)[:-1]))  # a crash
    fake_server.reset_counts()
    assert run_in_process(spec)["status"] == "complete"
    assert not [b for b in fake_server.bodies if b.get("top_logprobs")]  # reused: text decoded from ids
    assert len(journal_ok(tmp_path / "run")) == 4 == len(index_keys(store_of(tmp_path / "run")))


def test_token_strings_without_ids_stop_the_run_with_the_sft_hint(teacher, tmp_path, fake_server):
    tokenizer, _ = teacher
    fake_server.set(honour_token_ids=False)  # a hosted API: token strings, whatever was asked
    rows = [{"id": "g0", "prompt": [{"role": "user", "content": "Say hello"}]}]
    spec = capture_spec(tmp_path / "run", served(fake_server.url), tokenizer, rows, 'mode = "generate"')
    status = run_in_process(spec)["status"]
    assert "token strings" in status and "SFT" in status
    assert journal_ok(tmp_path / "run") == []


def test_status_of_a_capture_spec_neither_opens_the_store_nor_loads_torch(teacher, tmp_path):
    model_dir, _ = teacher
    spec = capture_spec(tmp_path / "run", served("http://127.0.0.1:9/v1"), model_dir, records(3))
    code = f"import sys; from engine.cli import main; main(['status', {str(spec)!r}]); print('torch' in sys.modules)"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "pending" in out.stdout and out.stdout.strip().endswith("False"), out.stderr[-2000:]
    assert not store_of(tmp_path / "run").exists()


def test_a_full_disk_while_storing_stops_the_run_and_the_same_command_resumes(teacher, tmp_path):
    model_dir, scorer = teacher
    # long completions: about 3.6 KB of rows a record in the store's .bin, 1.2 KB a journal line
    rows = [{"id": f"long-{i}", "prompt": f"Repeat {i}:", "completion": " the" * 200} for i in range(8)]
    folder = tmp_path / "run"
    with FakeServer(scorer=scorer) as server:
        spec = capture_spec(folder, served(server.url, concurrency=2), model_dir, rows)
        proc = run_limited(spec, 9000)  # the .bin crosses the limit first, at the third record
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"stopped: disk full writing {store_of(folder)}"), lines[0]
        stored_before = index_keys(store_of(folder))
        assert 0 < len(stored_before) < len(rows)
        engine_here("run", spec, "--quiet")
    keys = index_keys(store_of(folder))
    assert Counter(keys) == Counter({str(r["id"]): 1 for r in rows})  # the torn tail was cut, nothing twice
    assert sorted(str(e["id"]) for e in journal_ok(folder)) == sorted(keys)
    assert len(TopKReader(store_of(folder))) == len(rows)
