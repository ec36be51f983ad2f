"""A small pool of reader threads, so reads never wait behind writes or hold an actor.

Each thread keeps its own connection (peewee connections are per thread); the
pool bounds how many connections reads take, which matters on PostgreSQL, and at
shutdown every thread closes its own connection before it exits.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Future[Any], Callable[..., Any], tuple[object, ...]] | None


class ReaderPool:
    """Runs read queries on a few dedicated threads."""

    def __init__(self, size: int = 4) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"postroom-reader-{n}",
                                          daemon=True) for n in range(size)]
        self._close: Callable[[], None] = lambda: None
        for thread in self._threads:
            thread.start()

    def submit(self, query: Callable[..., T], *args: object) -> Future[T]:
        """Run `query(*args)` on a reader thread."""
        future: Future[T] = Future()
        self._jobs.put((future, query, args))
        return future

    def run(self, query: Callable[..., T], *args: object) -> T:
        """Run `query(*args)` on a reader thread and wait for its result."""
        return self.submit(query, *args).result()

    def shutdown(self, close: Callable[[], None]) -> None:
        """Each thread runs `close` (its own connection), then exits; waits for all."""
        self._close = close
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, query, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(query(*args))
                except BaseException as error:  # noqa: BLE001 - handed to the caller
                    future.set_exception(error)
        self._close()
