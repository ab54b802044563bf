"""The openai provider against a real third-party OpenAI-compatible server: llama.cpp's
(`llama-cpp-python[server]`) serving the bundled SmolLM2 GGUF on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.providers import build_provider
from engine.providers.local_model import bundled_gguf
from engine.types import ChatRequest

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python[server] is not installed (`make test` tries to build it)"
)
pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llamacpp") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_gguf()),
        "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "1024", "--n_threads", "1", "--verbose", "False",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            pytest.fail(f"llama.cpp server exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"llama.cpp server not ready after {READY_TIMEOUT_S:g} s; log: {log_path}")


def test_chat_completion_with_top_logprobs_through_the_openai_provider(server_url: str) -> None:
    provider = build_provider("llamacpp", {"kind": "openai", "base_url": server_url, "model": "smollm2"})
    request = ChatRequest(
        [{"role": "user", "content": "What is the capital of France?"}],
        {"temperature": 0, "max_tokens": 12, "top_logprobs": 3},
        extra_body={"repeat_penalty": 1.0},  # llama.cpp penalises repeats by default: then greedy is argmax
    )

    async def scenario():
        await provider.preflight()
        try:
            return await provider.complete(request)
        finally:
            await provider.aclose()

    done = asyncio.run(scenario())
    assert done.text.strip() and done.model == "smollm2"
    assert done.finish_reason in ("stop", "length")
    assert done.usage.prompt_tokens > 10 and 0 < done.usage.completion_tokens <= 12
    assert done.logprobs and len(done.logprobs) <= done.usage.completion_tokens
    for entry in done.logprobs:
        alternatives = [lp for _, lp in entry.top]
        assert len(entry.top) == 3 and alternatives == sorted(alternatives, reverse=True)
        assert all(lp <= 0 for lp in alternatives) and entry.logprob <= 1e-6
        assert entry.top[0] == (entry.token, entry.logprob)  # greedy: the chosen token ranks first
    assert "".join(str(e.token) for e in done.logprobs) == done.text  # English: no byte-fragment tokens
