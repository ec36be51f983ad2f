"""One face for the four queues a scenario runs: postroom, postroom without a database, seed, huey.

`open_system(name, ...)` yields a `Queue`: enqueue everything by the system's best
path, enqueue one message durably, wait until every outcome is committed. Each
system writes a SQLite file in the given directory and reports its no-op sends to
the scenario's `Deliveries`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast

import pykka

from bench._common import Deliveries, wait_until
from bench.huey_baseline import HueyQueue
from bench.nodb import MemorySupervisor
from bench.seed import SeedQueue
from postroom_common import Message
from storage import open_database
from supervisor import (
    AccountSettings,
    Broadcast,
    Enqueue,
    EnqueueBatch,
    GetStats,
    QueueStats,
    Status,
    Supervisor,
    SupervisorSettings,
)

__all__ = ["NO_OP_SETTINGS", "SYSTEMS", "PostroomQueue", "Queue", "open_system"]

#: In the order columns are printed.
SYSTEMS = ("postroom", "nodb", "seed", "huey")

#: A no-op sender needs no timeout thread, and a benchmark no idle stops (both noted in the report).
NO_OP_SETTINGS = SupervisorSettings(account=AccountSettings(send_timeout=None, idle_timeout=None))

_ASK_TIMEOUT = 120.0


class Queue(Protocol):
    """What a scenario does with a system."""

    def enqueue_all(self, items: Sequence[tuple[int, str]]) -> None:
        """Enqueue (index, phone) messages by the system's fastest durable path."""
        ...

    def enqueue_one(self, index: int, phone: str) -> None:
        """Enqueue one message; returns once it is durable."""
        ...

    def wait_finished(self, count: int, timeout: float) -> None:
        """Wait until `count` messages are recorded as sent (committed, not only sent)."""
        ...


class PostroomQueue:
    """Commands to a running supervisor."""

    def __init__(self, ref: pykka.ActorRef[Any], batch: int, scheduled_at: datetime | None) -> None:
        self.ref, self.batch, self.scheduled_at = ref, batch, scheduled_at

    def command(self, index: int, phone: str) -> Enqueue:
        return Enqueue(phone=phone, user_id="u", text=str(index), scheduled_at=self.scheduled_at)

    def enqueue_all(self, items: Sequence[tuple[int, str]]) -> None:
        for start in range(0, len(items), self.batch):
            chunk = [self.command(i, p) for i, p in items[start:start + self.batch]]
            self.ref.ask(EnqueueBatch(chunk), timeout=_ASK_TIMEOUT)

    def enqueue_one(self, index: int, phone: str) -> None:
        self.ref.ask(self.command(index, phone), timeout=_ASK_TIMEOUT)

    def broadcast(self, items: Sequence[tuple[int, str]]) -> None:
        """One text to every (index, phone): recipient `index` of account `phone`, one commit."""
        recipients = [(phone, str(index)) for index, phone in items]
        self.ref.ask(Broadcast(recipients, text="broadcast", scheduled_at=self.scheduled_at),
                     timeout=_ASK_TIMEOUT)

    def wait_finished(self, count: int, timeout: float) -> None:
        wait_until(lambda: self._completed() >= count, timeout, f"{count} completed rows")

    def _completed(self) -> int:
        stats = cast(QueueStats, self.ref.ask(GetStats(), timeout=_ASK_TIMEOUT))
        return int(stats.by_status[Status.COMPLETED])


class _OneAtATime:
    """A system with no bulk path: enqueueing many is enqueueing each, one commit each."""

    def enqueue_one(self, index: int, phone: str) -> None:
        raise NotImplementedError

    def enqueue_all(self, items: Sequence[tuple[int, str]]) -> None:
        for index, phone in items:
            self.enqueue_one(index, phone)


class SeedAdapter(_OneAtATime):
    """The seed has no bulk path: everything is one committed insert after another."""

    def __init__(self, seed: SeedQueue) -> None:
        self.seed = seed

    def enqueue_one(self, index: int, phone: str) -> None:
        self.seed.enqueue(index, phone)

    def wait_finished(self, count: int, timeout: float) -> None:
        wait_until(lambda: self.seed.completed() >= count, timeout, f"{count} completed rows")


class HueyAdapter(_OneAtATime):
    """huey has no bulk enqueue and no completion record: a task is done when it ran."""

    def __init__(self, huey: HueyQueue) -> None:
        self.huey = huey

    def enqueue_one(self, index: int, phone: str) -> None:
        self.huey.enqueue(index, phone)

    def wait_finished(self, count: int, timeout: float) -> None:
        wait_until(lambda: self.huey.deliveries.count >= count, timeout, f"{count} tasks run")


@contextmanager
def open_system(name: str, directory: Path, deliveries: Deliveries, *, batch: int = 1000,
                scheduled_ahead: bool = False, consume: bool = True,
                factory: type[sqlite3.Connection] | None = None,
                settings: SupervisorSettings = NO_OP_SETTINGS) -> Iterator[Queue]:
    """Start system `name` on a file in `directory`; stop it (in order) on exit.

    `scheduled_ahead` (postroom) and `consume=False` (seed, huey) keep senders idle, so
    that only the enqueue path is timed. `factory` is a sqlite3 connection class, used to
    count statements.
    """
    path = directory / f"{name}.db"
    if name in ("postroom", "nodb"):
        at = datetime.now(UTC) + timedelta(days=1) if scheduled_ahead else None
        with _supervisor(name, path, deliveries, settings, factory) as ref:
            yield PostroomQueue(ref, batch, at)
    elif name == "seed":
        database = _database(path, factory)
        seed = SeedQueue(path, deliveries, database, dispatch=consume)
        try:
            yield SeedAdapter(seed)
        finally:
            seed.stop()
    elif name == "huey":
        huey = HueyQueue(path, deliveries, factory)
        if consume:
            huey.start()
        try:
            yield HueyAdapter(huey)
        finally:
            huey.stop()
    else:
        raise ValueError(f"unknown system {name!r}; one of {SYSTEMS}")


@contextmanager
def _supervisor(name: str, path: Path, deliveries: Deliveries, settings: SupervisorSettings,
                factory: type[sqlite3.Connection] | None) -> Iterator[pykka.ActorRef[Any]]:
    def send(message: Message) -> None:
        deliveries.record(int(message.text), message.phone)

    kind = MemorySupervisor if name == "nodb" else Supervisor
    ref = kind.start(database=_database(path, factory), sender=send, settings=settings)
    try:
        yield ref
    finally:
        ref.stop(timeout=_ASK_TIMEOUT)


def _database(path: Path, factory: type[sqlite3.Connection] | None) -> Any:
    """postroom's own opening of the file (pragmas and all), with a counting connection if asked."""
    database = open_database(f"sqlite:///{path}")
    if factory is not None:
        database.connect_params["factory"] = factory
    return database
