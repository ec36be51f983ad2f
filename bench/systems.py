"""One face for the queues a scenario runs: postroom, postroom without a database, a plain actor
chain, that chain writing postroom's rows (the floor), seed, huey.

`open_system(name, ...)` yields a `Queue`: enqueue everything by the system's best
path, enqueue one message durably, wait until every outcome is committed. Each
system writes a SQLite file in the given directory and reports its no-op sends to
the scenario's `Deliveries` (the chain writes no file). postroom and no-db run with their
default settings, as a user starts them, and enqueue in one of `WAYS`, as the chain does.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import pykka

from bench._common import Deliveries, wait_until
from bench.chain import open_chain
from bench.floor import open_floor
from bench.huey_baseline import HueyQueue
from bench.nodb import MemorySupervisor
from bench.seed import SeedQueue
from postroom_common import Message
from storage import open_database
from supervisor import (
    AsyncPostroom,
    Broadcast,
    Enqueue,
    EnqueueBatch,
    GetStats,
    QueueStats,
    Status,
    Supervisor,
)

__all__ = ["SYSTEMS", "WAYS", "PostroomQueue", "Queue", "open_system"]

#: In the order columns are printed.
SYSTEMS = ("postroom", "nodb", "chain", "floor", "seed", "huey")

#: How a postroom user enqueues and sends: one `tell(Enqueue)` per message with a plain
#: sender; `EnqueueBatch` asked with a plain sender; `AsyncPostroom.enqueue_batch` awaited,
#: with an `async def` sender, on an asyncio loop.
WAYS = ("tell", "batch", "async")

_ASK_TIMEOUT = 120.0
_T = TypeVar("_T")


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
    """Commands to a running supervisor; `enqueue_all` asks one `EnqueueBatch` at a time."""

    def __init__(self, ref: pykka.ActorRef[Any], batch: int, scheduled_at: datetime | None) -> None:
        self.ref, self.batch, self.scheduled_at = ref, batch, scheduled_at

    def command(self, index: int, phone: str) -> Enqueue:
        return Enqueue(phone=phone, user_id="u", text=str(index), scheduled_at=self.scheduled_at)

    def chunks(self, items: Sequence[tuple[int, str]]) -> Iterator[list[Enqueue]]:
        """`items` as commands, `batch` at a time."""
        for start in range(0, len(items), self.batch):
            yield [self.command(i, p) for i, p in items[start:start + self.batch]]

    def enqueue_all(self, items: Sequence[tuple[int, str]]) -> None:
        for chunk in self.chunks(items):
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


class TellQueue(PostroomQueue):
    """Fire and forget: one `tell(Enqueue)` per message, no answer awaited."""

    def enqueue_all(self, items: Sequence[tuple[int, str]]) -> None:
        for index, phone in items:
            self.ref.tell(self.command(index, phone))


class AsyncQueue(PostroomQueue):
    """An `AsyncPostroom` on a loop in a thread of its own; each command awaited there."""

    def __init__(self, room: AsyncPostroom, loop: asyncio.AbstractEventLoop, batch: int,
                 scheduled_at: datetime | None) -> None:
        super().__init__(room.ref, batch, scheduled_at)
        self.room, self.loop = room, loop

    def enqueue_all(self, items: Sequence[tuple[int, str]]) -> None:
        _on(self.loop, self._enqueue_batches(items))

    def enqueue_one(self, index: int, phone: str) -> None:
        _on(self.loop, asyncio.wait_for(self.room.ask(self.command(index, phone)), _ASK_TIMEOUT))

    async def _enqueue_batches(self, items: Sequence[tuple[int, str]]) -> None:
        for chunk in self.chunks(items):
            await asyncio.wait_for(self.room.enqueue_batch(chunk), _ASK_TIMEOUT)


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
                way: str = "batch", scheduled_ahead: bool = False, consume: bool = True,
                factory: type[sqlite3.Connection] | None = None) -> Iterator[Queue]:
    """Start system `name` on a file in `directory`; stop it (in order) on exit.

    `way` (one of `WAYS`) is how postroom, no-db and the chain enqueue and send; seed and
    huey have one way. `scheduled_ahead` (postroom) and `consume=False` (seed, huey) keep senders
    idle, so that only the enqueue path is timed. `factory` is a sqlite3 connection
    class, used to count statements.
    """
    path = directory / f"{name}.db"
    if name in ("postroom", "nodb"):
        at = datetime.now(UTC) + timedelta(days=1) if scheduled_ahead else None
        with _postroom(name, way, _database(path, factory), deliveries, batch, at) as queue:
            yield queue
    elif name == "chain":
        with open_chain(way, deliveries.record, batch) as chain:  # no database, no file
            yield chain
    elif name == "floor":
        with open_floor(way, deliveries.record, batch, path) as floor:
            yield floor
    elif name == "seed":
        seed = SeedQueue(path, deliveries, _database(path, factory), dispatch=consume)
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


#: What every postroom start of the runs inside `start_options` is given besides the database
#: and the sender (a scenario's variant of (a): `metrics=`).
_START_OPTIONS: dict[str, Any] = {}


@contextmanager
def start_options(**options: Any) -> Iterator[None]:
    """Within it, every postroom started by `open_system` gets `options` too."""
    _START_OPTIONS.update(options)
    try:
        yield
    finally:
        for name in options:
            _START_OPTIONS.pop(name, None)


@contextmanager
def _postroom(name: str, way: str, database: Any, deliveries: Deliveries, batch: int,
              at: datetime | None) -> Iterator[PostroomQueue]:
    if way == "async":
        with _async_room(name, database, deliveries) as (room, loop):
            yield AsyncQueue(room, loop, batch, at)
        return
    if way not in WAYS:
        raise ValueError(f"unknown way {way!r}; one of {WAYS}")

    def send(message: Message) -> None:
        deliveries.record(int(message.text), message.phone)

    kind = MemorySupervisor if name == "nodb" else Supervisor
    ref = kind.start(database=database, sender=send, **_START_OPTIONS)  # default settings
    try:
        yield (TellQueue if way == "tell" else PostroomQueue)(ref, batch, at)
    finally:
        ref.stop(timeout=_ASK_TIMEOUT)


@contextmanager
def _async_room(name: str, database: Any,
                deliveries: Deliveries) -> Iterator[tuple[AsyncPostroom, asyncio.AbstractEventLoop]]:
    """An `AsyncPostroom` with an `async def` sender, on a loop running in a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bench-asyncio", daemon=True)
    thread.start()
    try:
        room = _on(loop, _start_room(name, database, deliveries))
        try:
            yield room, loop
        finally:
            _on(loop, room.stop(timeout=_ASK_TIMEOUT))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def _start_room(name: str, database: Any, deliveries: Deliveries) -> AsyncPostroom:
    async def send(message: Message) -> None:
        deliveries.record(int(message.text), message.phone)

    if name != "nodb":
        return await AsyncPostroom.start(database, send, **_START_OPTIONS)
    # AsyncPostroom.start with the database swapped: the same start, off the loop, with loop=.
    loop = asyncio.get_running_loop()
    ref = await asyncio.to_thread(MemorySupervisor.start, database, send, loop=loop)
    return AsyncPostroom(cast(pykka.ActorRef[Supervisor], ref))


def _on(loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, _T]) -> _T:
    """Run `work` on `loop` (in its thread) and wait for its result here."""
    return asyncio.run_coroutine_threadsafe(work, loop).result()


def _database(path: Path, factory: type[sqlite3.Connection] | None) -> Any:
    """postroom's own opening of the file (pragmas and all), with a counting connection if asked."""
    database = open_database(f"sqlite:///{path}")
    if factory is not None:
        database.connect_params["factory"] = factory
    return database
