"""`engine filter SPEC` replays the chain over stored answers: new counts, zero requests, no re-billing."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.engine_helpers import engine, outcomes, write_cases, write_spec

STAGES = """
[[stages]]
name = "answer"
generator = "template"
provider = "teacher"
input = "cases.jsonl"
prompt = "{question}"

[[stages.filters]]
kind = "rouge_dedupe"
fields = ["answer"]
threshold = THRESHOLD
"""


def test_replay_with_a_new_threshold_makes_no_request(tmp_path: Path, fake_server) -> None:
    spec = write_spec(tmp_path, fake_server.url, stages=STAGES.replace("THRESHOLD", "0.9"))
    # near-duplicate answers: the server echoes the prompt, and these differ in one word of six
    write_cases(tmp_path / "cases.jsonl", 6, text="the patient has a fever and cough variant {i}")
    engine("run", spec, "--quiet")
    requests = fake_server.requests
    strict = orjson.loads(engine("status", spec, "--json").stdout)["stages"]["answer"]["counts"]
    assert strict == {"kept": 6, "rejected": 0, "failed": 0, "pending": 0}

    spec.write_text(spec.read_text().replace("threshold = 0.9", "threshold = 0.7"))
    replayed = engine("filter", spec).stdout
    assert "rouge_dedupe" in replayed
    kept = outcomes(tmp_path / "out", "answer", "kept")
    rejected = outcomes(tmp_path / "out", "answer", "rejected")
    assert [r["id"] for r in kept] == ["c0000"]  # the first one is kept; the rest duplicate it
    assert {r["filter"] for r in rejected} == {"rouge_dedupe"} and len(rejected) == 5
    assert fake_server.requests == requests  # zero requests, nothing re-billed

    engine("run", spec, "--quiet")  # and a later run agrees with the replay, still without requests
    assert fake_server.requests == requests
    assert len(outcomes(tmp_path / "out", "answer", "kept")) == 1
