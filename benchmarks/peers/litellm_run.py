"""Runs one shard of a benchmark workload with LiteLLM's Router (in benchmarks/.venv-litellm).

LiteLLM is the peer that shares a provider's limit across processes: with `usage-based-routing-v2` and a
Redis cache, every Router counts the deployment's requests in per-minute Redis counters and refuses
(`RateLimitError`, retried by the Router) once `rpm` is reached. Reads the JSONL cases, keeps every
N-th from I, sends "Answer briefly: {question}" for each with at most --concurrency in flight, writes one
{"id", "answer"} line per record (answer null when it failed), and prints one JSON line:
{"peer", "seconds", "rows"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="base_url, e.g. http://127.0.0.1:8011/v1")
    p.add_argument("--model", default="test-model")
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--shard", default="0/1", help="I/N, 0-based: this process takes records I, I+N, ...")
    p.add_argument("--rpm", type=int, required=True, help="the deployment's rpm (the account's)")
    p.add_argument("--concurrency", type=int, required=True, help="requests in flight in this process")
    p.add_argument("--redis", default="", help="redis://HOST:PORT/DB shared by every shard")
    p.add_argument("--retries", type=int, default=6)
    a = p.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

    import litellm
    from litellm import Router

    litellm.suppress_debug_info = True
    index, count = (int(x) for x in a.shard.split("/"))
    rows = [json.loads(line) for line in a.input.read_text().splitlines() if line.strip()]
    mine = rows[index::count]
    redis = urlsplit(a.redis) if a.redis else None
    router = Router(
        model_list=[
            {
                "model_name": "teacher",
                "litellm_params": {
                    "model": f"openai/{a.model}",
                    "api_base": a.url,
                    "api_key": "sk-bench",
                    "rpm": a.rpm,
                },
            }
        ],
        routing_strategy="usage-based-routing-v2",
        redis_host=redis.hostname if redis else None,
        redis_port=redis.port if redis else None,
        num_retries=a.retries,
    )
    gate = asyncio.Semaphore(a.concurrency)

    async def one(row: dict) -> dict:
        async with gate:
            try:
                prompt = f"Answer briefly: {row['question']}"
                response = await router.acompletion(
                    model="teacher", messages=[{"role": "user", "content": prompt}]
                )
                return {"id": row["id"], "answer": response.choices[0].message.content}
            except Exception as exc:  # noqa: BLE001 - a failed record is an outcome here
                return {"id": row["id"], "answer": None, "error": f"{type(exc).__name__}: {exc}"[:300]}

    async def run() -> list[dict]:
        return await asyncio.gather(*(one(row) for row in mine))

    start = time.perf_counter()
    results = asyncio.run(run())
    seconds = time.perf_counter() - start
    with a.output.open("w") as f:
        for row in results:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    failed = [r for r in results if r["answer"] is None]
    if failed:
        print(f"{len(failed)} failed, e.g. {failed[0]['error']}", file=sys.stderr)
    print(json.dumps({"peer": "litellm", "seconds": seconds, "rows": len(results)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
