"""Fixtures of the integration tests beyond the shared ones (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.integration.tcp_proxy import TcpProxy


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[TcpProxy]:
    """A TcpProxy in front of the test PostgreSQL server (`through(url, proxy)` reaches it),
    closed after the test."""
    parts = urlsplit(postgres_url)
    running = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    yield running
    running.close()
