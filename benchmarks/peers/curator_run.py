"""Runs one benchmark workload with bespokelabs-curator 0.1.31 (in benchmarks/.venv-curator).

Reads the JSONL cases, sends "Answer briefly: {question}" for each through curator's OpenAI online
backend against a local OpenAI-compatible server, writes one {"id", "answer"} line per returned row,
and prints one JSON line: {"peer", "seconds", "rows"} (seconds = the curator call alone, no imports).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _offline_env(work: Path) -> None:
    """What curator needs to run against a local base_url with no network (set before importing it)."""
    os.environ.setdefault("TELEMETRY_ENABLED", "false")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ["CURATOR_DISABLE_CACHE"] = "1"  # a fresh fingerprint every run: no cached answers
    os.environ["CURATOR_CACHE_DIR"] = str(work)
    os.environ.setdefault("CURATOR_DISABLE_RICH_DISPLAY", "1")
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    import importlib.util

    litellm_dir = Path(importlib.util.find_spec("litellm").submodule_search_locations[0])
    os.environ["TIKTOKEN_CACHE_DIR"] = str(litellm_dir / "litellm_core_utils" / "tokenizers")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="base_url, e.g. http://127.0.0.1:8011/v1")
    p.add_argument("--model", default="test-model")
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--work", type=Path, help="scratch folder for the peer's own files (default: a temp one)")
    p.add_argument("--rpm", type=int, default=None, help="max_requests_per_minute (omit: no RPM limit)")
    a = p.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="curator-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    _offline_env(work)

    from bespokelabs import curator

    class Answer(curator.LLM):
        def prompt(self, row: dict) -> str:
            return f"Answer briefly: {row['question']}"

        def parse(self, row: dict, response: str) -> dict:
            return {"id": row["id"], "answer": response}

    rows = [json.loads(line) for line in a.input.read_text().splitlines() if line.strip()]
    backend_params = {
        "base_url": a.url,
        "api_key": os.environ["OPENAI_API_KEY"],
        "max_concurrent_requests": a.concurrency,
        # no token limit: the engine runs without tpm too; curator needs a number, so a huge one
        "max_tokens_per_minute": 10**12,
        "max_requests_per_minute": a.rpm or 10**9,
        "require_all_responses": False,  # count losses ourselves rather than raise
        "max_retries": 6,  # the engine's default
    }
    llm = Answer(model_name=a.model, backend="openai", backend_params=backend_params)
    start = time.perf_counter()
    result = llm(rows, working_dir=str(work))
    seconds = time.perf_counter() - start
    dataset = result.dataset if hasattr(result, "dataset") else result
    with a.output.open("w") as out:
        for row in dataset:
            out.write(json.dumps({"id": row["id"], "answer": row["answer"]}) + "\n")
    print(json.dumps({"peer": "curator", "seconds": round(seconds, 3), "rows": len(dataset)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
