"""LISTEN for the changes other processes make (PostgreSQL): the owner's prompt wake-up.

A thread of its own holds a connection that LISTENs on `CHANGES_CHANNEL` and calls
`on_change` for each notification (a producer's transaction sends one at its commit). The
notification carries nothing: the owner reads the change feed, which is the record. A
connection that dies is noticed (a read with a timeout, TCP keepalives), replaced with a
backoff, and `on_change` is called once it listens again, for whatever was committed while
nobody listened. The owner's slow poll of the feed stays the safety net.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import peewee

from postroom_common.logs import get_logger
from storage.models import CHANGES_CHANNEL
from storage.owner import connect_params

__all__ = ["ChangeListener"]

log = get_logger("postroom.storage")

#: Seconds a wait for notifications lasts before the thread looks whether it must stop.
WAKE_EVERY = 0.5
#: Seconds between two tries to listen again, growing to `RETRY_MOST` while the server is away.
RETRY_FIRST = 0.1
RETRY_MOST = 5.0


class ChangeListener:
    """A thread that LISTENs on PostgreSQL and calls `on_change` (see the module)."""

    def __init__(self, database: peewee.Database, on_change: Callable[[], None]) -> None:
        assert isinstance(database, peewee.PostgresqlDatabase)  # SQLite has no notifications
        self._params = connect_params(database)
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="postroom-listen", daemon=True)
        self.listening = threading.Event()  # set while a connection listens (tests wait on it)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening; returns once the thread has ended (at most `timeout` seconds)."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        wait = RETRY_FIRST
        while not self._stop.is_set():
            try:
                self._listen()
                wait = RETRY_FIRST
            except Exception as error:  # noqa: BLE001 - any failure: listen again, later
                self.listening.clear()
                log.warning("listen.lost", error=f"{type(error).__name__}: {error}".splitlines()[0],
                            retry_in=wait)
                self._stop.wait(wait)
                wait = min(RETRY_MOST, wait * 2)

    def _listen(self) -> None:
        import psycopg

        with psycopg.connect(**self._params, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANGES_CHANNEL}")
            self.listening.set()
            self._on_change()  # what was committed while nobody listened
            while not self._stop.is_set():
                for _ in _notifies(conn):
                    self._on_change()  # at once: the owner folds a burst into one read
        self.listening.clear()


def _notifies(conn: Any) -> Any:
    """The notifications that arrive within `WAKE_EVERY` (raises if the connection died)."""
    gen = conn.notifies(timeout=WAKE_EVERY)
    with contextlib.closing(gen):
        yield from gen
