"""Runs one benchmark workload with distilabel 1.5.3 (in benchmarks/.venv-distilabel).

A two-step Pipeline (LoadDataFromDicts -> TextGeneration with OpenAILLM) against a local
OpenAI-compatible server. Concurrency is TextGeneration's input_batch_size: distilabel sends a batch
concurrently and waits for all of it before the next one. It has no client-side RPM limiter; 429s
are left to the openai SDK's own retries. Writes one {"id", "answer"} line per output row and prints
one JSON line: {"peer", "seconds", "rows"} (seconds = pipeline.run alone, no imports).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="base_url, e.g. http://127.0.0.1:8011/v1")
    p.add_argument("--model", default="test-model")
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--work", type=Path, help="scratch folder for the peer's own files (default: a temp one)")
    a = p.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="distilabel-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["DISTILABEL_CACHE_DIR"] = str(work)  # no stray state under ~/.cache between runs

    from distilabel.models.llms import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    rows = [json.loads(line) for line in a.input.read_text().splitlines() if line.strip()]
    data = [{"id": r["id"], "instruction": f"Answer briefly: {r['question']}"} for r in rows]
    with Pipeline(name="engine-throughput-bench", cache_dir=work) as pipeline:
        load = LoadDataFromDicts(data=data, batch_size=a.concurrency)
        generate = TextGeneration(
            llm=OpenAILLM(model=a.model, base_url=a.url, api_key="sk-bench", max_retries=6, timeout=120),
            input_batch_size=a.concurrency,
            use_system_prompt=False,
        )
        load >> generate
    start = time.perf_counter()
    distiset = pipeline.run(use_cache=False)
    seconds = time.perf_counter() - start
    out_rows = distiset["default"]["train"]
    with a.output.open("w") as out:
        for row in out_rows:
            out.write(json.dumps({"id": row["id"], "answer": row["generation"]}) + "\n")
    print(json.dumps({"peer": "distilabel", "seconds": round(seconds, 3), "rows": len(out_rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
