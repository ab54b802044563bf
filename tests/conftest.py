"""Shared pytest fixtures. `fake_server`: a fresh OpenAI-compatible test server (tests/server.py) per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import FakeServer


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A running FakeServer on a free 127.0.0.1 port serving model "test-model". Change its behaviour
    with `set(...)`, `fail_next(...)`, `script(...)`; read `requests`, `status_counts`, `bodies`."""
    server = FakeServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def view_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three versions of a small Chinese diagnosis run (tests/view_fixture.py), built once per session
    with the real engine against the fake server; tests must not change them (copy first)."""
    from tests.view_fixture import build

    with FakeServer() as server:
        return build(tmp_path_factory.mktemp("view-runs"), server)
