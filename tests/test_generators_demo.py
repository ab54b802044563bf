"""`runs/demo/spec.toml` (what `make demo` runs) end to end on the real bundled SmolLM2-135M, offline:
self-instruct, filters, both labelling stages, then the SFT and submission exports. Run in a copy under
tmp_path so nothing lands in the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine_helpers import ROOT, outcomes

DEMO = ROOT / "runs" / "demo"


def run_engine(*args: object, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"engine {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    )
    return proc


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~1.5 min measured on 2 busy cores; the limit allows for a far busier machine
def test_demo_spec_ends_with_labelled_export_ready_records(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    for path in DEMO.iterdir():
        if path.is_file() and path.suffix in {".toml", ".jsonl"}:
            shutil.copy(path, tmp_path / path.name)
    spec = tmp_path / "spec.toml"
    # the converted model is kept between test runs (pytest's cache folder), outputs stay in tmp_path
    cache_plugin = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    cache = cache_plugin.mkdir("smollm2-conversion") if cache_plugin else tmp_path / "cache"
    text = spec.read_text(encoding="utf-8")
    spec.write_text(text.replace('out = "out"\n', f'out = "out"\ncache = "{cache}"\n', 1), encoding="utf-8")
    run_engine("run", spec, "--quiet", timeout=1100)

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    final = outcomes(tmp_path / "out", "label_reasons", "kept")
    assert final, "the demo must end with kept records"
    for record in final:
        assert set(record) >= {"id", "feature_content", "diseases", "reason"}
        assert record["feature_content"].startswith("性别: ")
        assert record["diseases"] and all(isinstance(d, str) and d for d in record["diseases"])
        assert record["reason"] and all(isinstance(p, str) and p for p in record["reason"])
    generated = outcomes(tmp_path / "out", "self_instruct", "kept")
    assert {r["id"] for r in final} <= {r["id"] for r in generated}
    assert manifest["stages"]["label_reasons"]["stats"]["records"] == len(final)

    submission = tmp_path / "submission.jsonl"
    run_engine(
        "export", spec, "--stage", "label_reasons", "--format", "submission", "-o", submission, timeout=120
    )
    lines = [json.loads(line) for line in submission.read_text(encoding="utf-8").splitlines()]
    assert [list(line) for line in lines] == [["id", "reason", "diseases", "feature_content"]] * len(final)
    sft = tmp_path / "sft.jsonl"
    run_engine("export", spec, "--stage", "label_reasons", "--format", "sft", "-o", sft, timeout=120)
    assert len(sft.read_text(encoding="utf-8").splitlines()) == len(final)
