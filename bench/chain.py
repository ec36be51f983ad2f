"""A plain chain of pykka actors making postroom's hand-offs per message, with no database.

What it measures: the floor that postroom's design (one writer, one actor per account,
a send pool) sets for scenario (a), built from pykka's own `ThreadingActor`s (a thread
each) and nothing of postroom's: no runtime, no storage, no account machine. "postroom
keeps 70% of a plain actor chain" is then measured against it, not assumed.

Per message, the hand-offs between threads that postroom makes (the README's "How it
works"), and nothing else:

1. caller -> writer: `Insert` (one per message told, or a batch asked and answered once);
2. writer -> account: `Arrived`, the new rows of that account, once per account per drain
   of the writer's inbox (at most `MAX_BATCH` messages), as postroom routes them once per
   account and commit; an account is started on first use by the writer;
3. account -> writer: `RecordAndClaim`, the outcome of the send that ended (if any) and the
   claim of its next message (priority, then FIFO, from its deques; one in flight);
4. writer -> send pool: the claimed message's send (a `ThreadPoolExecutor` of postroom's
   default size, or an `async def` sender on an asyncio loop in a thread of its own);
5. send thread -> account: the writer's answer to its claim (`Recorded`), then `SendEnded`,
   as postroom's `SendTicket` reports both; the account then makes step 3 again.

The writer counts the outcomes it records, so that `ChainQueue.wait_finished` waits for
what the writer recorded, not for the sends alone. Left out, on purpose: SQL and
transactions (so no group commit: the writer handles one message per turn), retries,
pacing, schedules, validation, logs, timeouts and crash recovery.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pykka

__all__ = ["ChainAccount", "ChainQueue", "ChainWriter", "ended_send", "open_chain", "open_launch",
           "running_writer"]

#: Messages the writer handles between two routings of new rows (postroom's writer's `max_batch`).
MAX_BATCH = 2000
#: Threads of the send pool at most: postroom's default `send_threads`.
SEND_THREADS = min(1024, 64 * (os.cpu_count() or 2))
#: Priorities, in the order an account sends them.
HIGH, NORMAL, LOW = 0, 1, 2

_ASK_TIMEOUT = 120.0
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Item:
    """One message as the chain carries it."""

    phone: str
    """Its account."""
    text: str
    """The scenario's index, as postroom's bench messages carry it."""
    priority: int = NORMAL
    id: int = 0
    """Its row's id, where a writer writes rows (`bench/floor.py`)."""


@dataclass(frozen=True, slots=True)
class Insert:
    """Caller -> writer: new messages (index, phone). Answer: how many (asked, or `answer`)."""

    items: Sequence[tuple[int, str]]
    answer: Callable[[int], None] | None = None
    """Called with the answer (the async way: it answers into the caller's loop)."""


@dataclass(frozen=True, slots=True)
class Arrived:
    """Writer -> account: its new messages, in order."""

    items: Sequence[Item]


@dataclass(frozen=True, slots=True)
class RecordAndClaim:
    """Account -> writer: record `record`'s outcome, claim `claim` and start its send."""

    account: pykka.ActorRef[Any]
    record: Item | None
    claim: Item | None


@dataclass(frozen=True, slots=True)
class Recorded:
    """Writer -> account (from the send thread when a send was started): the answer to its write."""

    claimed: Item | None


@dataclass(frozen=True, slots=True)
class SendEnded:
    """Send thread -> account: the send of `item` ended."""

    item: Item


#: Starts the send of an item and calls the callable, in the sending thread, when it ended.
Launch = Callable[[Item, Callable[[], None]], None]


class Completed:
    """How many outcomes the writer recorded, and a wait for a count of them."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = threading.Condition()

    def add(self, count: int = 1) -> None:
        with self._changed:
            self.count += count
            self._changed.notify_all()

    def wait(self, count: int, timeout: float) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.count >= count, timeout):
                raise TimeoutError(f"{self.count} of {count} outcomes recorded within {timeout:.0f} s")


class ChainWriter(pykka.ThreadingActor):
    """The one writer: takes inserts, starts accounts, claims, starts sends, records."""

    def __init__(self, launch: Launch, completed: Completed) -> None:
        super().__init__()
        self.launch, self.completed = launch, completed
        self.accounts: dict[str, pykka.ActorRef[Any]] = {}
        self.new: dict[str, list[Item]] = {}
        self.since_routed = 0

    def on_receive(self, message: Any) -> Any:
        answer = None
        match message:
            case Insert(items, reply):
                for index, phone in items:
                    self.new.setdefault(phone, []).append(Item(phone, str(index)))
                answer = len(items)
                if reply is not None:
                    reply(answer)
            case RecordAndClaim(account, record, claim):
                if record is not None:
                    self.completed.add()
                if claim is None:
                    account.tell(Recorded(None))
                else:
                    self.launch(claim, ended_send(account, claim))
            case _:
                raise TypeError(f"chain writer cannot handle {type(message).__name__}")
        if self.new:  # routed once the inbox is drained, or MAX_BATCH messages after the first row
            self.since_routed += 1
            if self.since_routed >= MAX_BATCH or self.actor_inbox.empty():
                self._route()
        return answer

    def on_stop(self) -> None:
        for account in self.accounts.values():
            account.stop(timeout=_ASK_TIMEOUT)

    def _route(self) -> None:
        new, self.new, self.since_routed = self.new, {}, 0
        for phone, items in new.items():
            account = self.accounts.get(phone)
            if account is None:
                account = self.accounts[phone] = ChainAccount.start(self.actor_ref)
            account.tell(Arrived(items))


def ended_send(account: pykka.ActorRef[Any], item: Item) -> Callable[[], None]:
    """What the send thread calls when `item`'s send ended."""
    return functools.partial(_ended, account, item)


def _ended(account: pykka.ActorRef[Any], item: Item) -> None:
    """In the send thread: the writer's answer to the claim, then the send's end."""
    account.tell(Recorded(item))
    account.tell(SendEnded(item))


class ChainAccount(pykka.ThreadingActor):
    """One account: its messages in priority then FIFO order, one claim or send at a time."""

    def __init__(self, writer: pykka.ActorRef[Any]) -> None:
        super().__init__()
        self.writer = writer
        self.queues: tuple[deque[Item], ...] = (deque(), deque(), deque())
        self.write_out = False  # a RecordAndClaim awaits its answer
        self.sending = False  # a claimed message's send has not ended

    def on_receive(self, message: Any) -> None:
        match message:
            case Arrived(items):
                for item in items:
                    self.queues[item.priority].append(item)
                if not self.write_out and not self.sending:
                    self._write(None)
            case Recorded(claimed):
                self.write_out = False
                if claimed is None and not self.sending:
                    self._write(None)  # mail that arrived while a record alone was out
            case SendEnded(item):
                self.sending = False
                self._write(item)
            case _:
                raise TypeError(f"chain account cannot handle {type(message).__name__}")

    def _write(self, record: Item | None) -> None:
        """Record `record` and claim the next message, in one request (if there is either)."""
        claim = next((queue.popleft() for queue in self.queues if queue), None)
        if record is None and claim is None:
            return
        self.write_out, self.sending = True, claim is not None
        self.writer.tell(RecordAndClaim(self.actor_ref, record, claim))


class ChainQueue:
    """The bench's `Queue` over a running chain, enqueueing in one of postroom's ways."""

    def __init__(self, writer: pykka.ActorRef[Any], completed: Completed, way: str, batch: int,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.writer, self.completed, self.way, self.batch, self.loop = writer, completed, way, batch, loop

    def enqueue_all(self, items: Sequence[tuple[int, str]]) -> None:
        if self.way == "tell":
            for item in items:
                self.writer.tell(Insert((item,)))
        elif self.loop is not None:
            _on(self.loop, self._ask_on_loop(self._chunks(items)))
        else:
            for chunk in self._chunks(items):
                self._ask(chunk)

    def enqueue_one(self, index: int, phone: str) -> None:
        if self.loop is not None:
            _on(self.loop, self._ask_on_loop([[(index, phone)]]))
        else:
            self._ask(((index, phone),))

    def _ask(self, items: Sequence[tuple[int, str]]) -> None:
        """Insert `items` and wait for the writer's answer (which a floor gives after its commit)."""
        answered: Future[int] = Future()
        self.writer.tell(Insert(items, answered.set_result))
        answered.result(_ASK_TIMEOUT)

    def wait_finished(self, count: int, timeout: float) -> None:
        self.completed.wait(count, timeout)

    def _chunks(self, items: Sequence[tuple[int, str]]) -> Iterator[Sequence[tuple[int, str]]]:
        for start in range(0, len(items), self.batch):
            yield items[start:start + self.batch]

    async def _ask_on_loop(self, chunks: Iterator[Sequence[tuple[int, str]]] | list[Any]) -> None:
        """Each chunk asked of the writer in turn, its answer awaited on this loop."""
        loop = asyncio.get_running_loop()
        for chunk in chunks:
            answered: asyncio.Future[int] = loop.create_future()
            self.writer.tell(Insert(chunk, functools.partial(_answer_on, loop, answered)))
            await asyncio.wait_for(answered, _ASK_TIMEOUT)


def _answer_on(loop: asyncio.AbstractEventLoop, answered: asyncio.Future[int], value: int) -> None:
    loop.call_soon_threadsafe(_resolve, answered, value)


def _resolve(answered: asyncio.Future[int], value: int) -> None:
    if not answered.done():
        answered.set_result(value)


@contextmanager
def open_chain(way: str, record: Callable[[int, str], None], batch: int) -> Iterator[ChainQueue]:
    """A running chain whose sends call `record(index, phone)`; every actor stopped on exit.

    `way` is postroom's: "tell" and "batch" send on a thread pool with a plain sender,
    "async" on an asyncio loop in a thread of its own with an `async def` sender (and
    enqueues from that loop)."""
    with open_launch(way, record) as (launch, loop), \
            running_writer(lambda completed: ChainWriter.start(launch, completed), way, batch, loop) as queue:
        yield queue


@contextmanager
def open_launch(way: str, record: Callable[[int, str], None]
                ) -> Iterator[tuple[Launch, asyncio.AbstractEventLoop | None]]:
    """How sends start `way` (and the loop enqueues run on, for "async"); stopped on exit."""
    if way not in ("tell", "batch", "async"):
        raise ValueError(f"unknown way {way!r}")
    if way == "async":
        with _loop() as loop:
            yield _on_loop(loop, record), loop
        return
    pool = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="chain-send")
    try:
        yield _on_pool(pool, record), None
    finally:
        pool.shutdown(wait=True)


@contextmanager
def running_writer(start: Callable[[Completed], pykka.ActorRef[Any]], way: str, batch: int,
                   loop: asyncio.AbstractEventLoop | None) -> Iterator[ChainQueue]:
    """The writer `start` starts with the count of outcomes it records, and a queue over it."""
    completed = Completed()
    writer = start(completed)
    try:
        yield ChainQueue(writer, completed, way, batch, loop)
    finally:
        writer.stop(timeout=_ASK_TIMEOUT)  # its on_stop stops every account


def _on_pool(pool: ThreadPoolExecutor, record: Callable[[int, str], None]) -> Launch:
    def send(item: Item, ended: Callable[[], None]) -> None:
        try:
            record(int(item.text), item.phone)  # the no-op sender of postroom's bench
        finally:
            ended()

    def launch(item: Item, ended: Callable[[], None]) -> None:
        pool.submit(send, item, ended)

    return launch


def _on_loop(loop: asyncio.AbstractEventLoop, record: Callable[[int, str], None]) -> Launch:
    async def send(item: Item) -> None:
        record(int(item.text), item.phone)  # the async def no-op sender of postroom's bench

    def launch(item: Item, ended: Callable[[], None]) -> None:
        asyncio.run_coroutine_threadsafe(send(item), loop).add_done_callback(lambda _: ended())

    return launch


@contextmanager
def _loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="chain-asyncio", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def _on(loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, _T]) -> _T:
    """Run `work` on `loop` (in its thread) and wait for its result here."""
    return asyncio.run_coroutine_threadsafe(work, loop).result()
