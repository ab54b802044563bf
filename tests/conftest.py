"""Shared pytest fixtures. `fake_server`: a fresh OpenAI-compatible test server (tests/server.py) per test."""

from __future__ import annotations

from collections.abc import Iterator

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
