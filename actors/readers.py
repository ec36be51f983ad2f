"""A small pool of reader threads, so reads never wait behind writes or hold an actor.

Each thread keeps its own connection (peewee connections are per thread); the
pool bounds how many connections reads take, which matters on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ReaderPool:
    """Runs read queries on a few dedicated threads."""

    def __init__(self, size: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="postroom-reader")

    def submit(self, query: Callable[..., T], *args: object) -> Future[T]:
        """Run `query(*args)` on a reader thread."""
        return self._pool.submit(query, *args)

    def run(self, query: Callable[..., T], *args: object) -> T:
        """Run `query(*args)` on a reader thread and wait for its result."""
        return self._pool.submit(query, *args).result()

    def shutdown(self, close: Callable[[], None]) -> None:
        """Close every reader's connection, then stop the threads."""
        self._pool.submit(close).result()
        self._pool.shutdown(wait=True, cancel_futures=True)
