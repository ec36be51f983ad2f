"""Fixtures shared by unit and integration tests: databases, actors, logs, waiting."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest
import structlog

from storage import Storage, open_database
from storage.models import TABLES

POSTGRES_URL = os.environ.get("POSTROOM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("POSTROOM_REQUIRE_POSTGRES") == "1"


def postgres_reason() -> str | None:
    """Why PostgreSQL cannot be used here, or None when it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install postroom[postgres])"
    try:
        psycopg.connect(POSTGRES_URL.replace("postgresql://", "postgresql://", 1), connect_timeout=2).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL at {POSTGRES_URL}: {exc}".splitlines()[0]
    return None


def require_postgres() -> None:
    reason = postgres_reason()
    if reason is None:
        return
    if REQUIRE_POSTGRES:
        pytest.fail(f"POSTROOM_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


def reset_postgres() -> None:
    db = open_database(POSTGRES_URL)
    for table in TABLES:
        db.execute_sql(f"DROP TABLE IF EXISTS {table}")
    db.execute_sql("DROP SEQUENCE IF EXISTS message_queue_id_seq")
    db.close()


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    """A fresh SQLite file under tmp_path (never :memory:: connections are per thread)."""
    return f"sqlite:///{tmp_path}/postroom.db"


@pytest.fixture
def postgres_url() -> str:
    """The test PostgreSQL database, emptied; skipped (or failed in CI) when unreachable."""
    require_postgres()
    reset_postgres()
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Each backend in turn: the storage contract must hold on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/postroom.db"
    require_postgres()
    reset_postgres()
    return POSTGRES_URL


@pytest.fixture
def storage(database_url: str) -> Iterator[Storage]:
    """A Storage with its schema created, on each backend."""
    store = Storage(open_database(database_url))
    store.create_schema()
    yield store
    store.close()


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=30)


class LogCapture:
    """A thread-safe structlog processor that keeps every event (capture_logs is not thread-safe)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, _: Any, method: str, event_dict: dict[str, Any]) -> Any:
        with self._lock:
            self.entries.append({**event_dict, "log_level": method})
        raise structlog.DropEvent

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.entries if e.get("event") == name]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Capture every structlog event for the duration of the test."""
    capture = LogCapture()
    structlog.configure(processors=[capture])
    yield capture
    structlog.reset_defaults()


def eventually(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.01) -> Any:
    """Wait until `check()` returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        time.sleep(interval)
