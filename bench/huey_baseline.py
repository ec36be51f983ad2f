"""huey as a baseline: SqliteHuey on a file, a no-op task, 4 worker threads in this process.

huey has no accounts, no per-message states and no bulk enqueue: each enqueue is one
committed INSERT, and a worker's dequeue is one committed SELECT+DELETE (the task row
is gone once taken, so a crash mid-task loses it: at-most-once). It is what a generic
durable job queue costs on the same disk, with synchronous=FULL (`fsync=True`) like
postroom. Results are off (a no-op has none to keep). Workers poll an empty queue
every 5 ms (huey's default starts at 100 ms and backs off to 10 s, which would measure
the polling interval instead of the queue in the latency scenario).
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huey import SqliteHuey

from bench._common import Deliveries

__all__ = ["HueyQueue"]

WORKERS = 4
POLL = 0.005  # seconds between polls of an empty queue (initial and maximum delay)
_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s)


class HueyQueue:
    """A SqliteHuey with one task, `send(index, phone)`, that reports to `deliveries`."""

    def __init__(self, path: Path, deliveries: Deliveries,
                 factory: type[sqlite3.Connection] | None = None) -> None:
        extra: dict[str, Any] = {"factory": factory} if factory is not None else {}
        self.huey = SqliteHuey(name="bench", filename=str(path), fsync=True, results=False, **extra)
        self.deliveries = deliveries
        self.send = self.huey.task(name="send")(self._run)
        self._consumer: Any = None

    def _run(self, index: int, phone: str) -> None:
        self.deliveries.record(index, phone)

    def enqueue(self, index: int, phone: str) -> None:
        """One durable enqueue: huey commits the task row before returning."""
        self.send(index, phone)

    def task_blob(self, index: int, phone: str) -> bytes:
        """The stored form of one task, for writing a backlog without enqueueing it."""
        return bytes(self.huey.serialize_task(self.send.s(index, phone)))

    def start(self) -> None:
        """Start the consumer: WORKERS threads plus huey's scheduler thread."""
        self._consumer = self.huey.create_consumer(
            workers=WORKERS, worker_type="thread", periodic=False, initial_delay=POLL,
            max_delay=POLL, check_worker_health=False)
        with _keep_signal_handlers():  # Consumer.start installs its own; ours stay
            self._consumer.start()

    def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.stop(graceful=True)
            self._consumer = None
        self.huey.storage.close()


@contextmanager
def _keep_signal_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in _SIGNALS}
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
