"""A producer: enqueue into, cancel and requeue in a queue that another process sends from.

    with Producer("sqlite:///postroom.db") as producer:     # beside a running bot, or none
        message_id = producer.enqueue(phone="+15550001", user_id=42, text="hi")

It runs no actor and never sends. It takes no owner lock and never creates or migrates a
schema (a missing or older one is `SchemaMismatch`, naming `postroom migrate`). Each call
checks its command at the same door as the supervisor's (`validate_insert`: the same
validation, errors and idempotency keys), writes it in a transaction of its own, tells the
owner through the change feed in that transaction (on PostgreSQL also a notification at the
commit), and answers only once it is committed. Safe from many threads (each has its own
connection) and many processes (the database serialises their writes; ids are never held
in memory). Rows written while no supervisor runs wait for the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from actors.clock import Clock, SystemClock
from actors.messages import Broadcast, Enqueue, EnqueueBatch
from actors.validation import Limits, validate_insert
from postroom_common import Change, ChangeKind, Message
from storage import SqliteSettings, Storage, open_database

__all__ = ["AsyncProducer", "Producer"]

_T = TypeVar("_T")


class Producer:
    """Writes into a queue a supervisor (maybe in another process) sends from; see the module."""

    def __init__(self, database: str | Any, *, limits: Limits | None = None, clock: Clock | None = None,
                 sqlite: SqliteSettings | None = None) -> None:
        self.limits = limits or Limits()
        self.clock: Clock = clock or SystemClock()
        # create=False: a producer never creates a database (a mistyped SQLite path is refused).
        self.storage = Storage(open_database(database, sqlite, create=False))
        try:
            self.storage.check_schema()
            self.storage.check_keys()
        except BaseException:
            self.storage.close_all()
            raise

    # -- writes ---------------------------------------------------------------------------

    def enqueue(self, phone: str, user_id: str | int, text: str = "", **fields: Any) -> int:
        """Queue one message (the fields of `Enqueue`); its id once committed."""
        (message_id,) = self._insert(Enqueue(phone=phone, user_id=user_id, text=text, **fields))
        return message_id

    def enqueue_batch(self, messages: Sequence[Enqueue]) -> list[int]:
        """Queue many messages in one commit, all or nothing; their ids."""
        return self._insert(EnqueueBatch(messages))

    def broadcast(self, recipients: Sequence[tuple[str, str | int]], text: str = "",
                  **fields: Any) -> list[int]:
        """Queue one message to many (phone, user_id) recipients in one commit; their ids."""
        return self._insert(Broadcast(recipients, text=text, **fields))

    def _insert(self, command: Enqueue | EnqueueBatch | Broadcast) -> list[int]:
        insert = validate_insert(command, self.clock.now(), self.limits)
        now = self.clock.now()
        with self.storage.write_transaction():
            ids = insert.ids(self.storage.insert(insert.news, all_or_nothing=insert.keyed))
            if ids:  # a replay's old id in the range is harmless: the owner reads what is open
                self.storage.announce([Change(ChangeKind.INSERTED, first_id=min(ids), last_id=max(ids))], now)
        return ids

    def cancel(self, message_id: int) -> Message:
        """Cancel a pending or retrying message (`InvalidTransition` otherwise): once this
        returns, its owner never sends it."""
        return self._change(message_id, self.storage.cancel, ChangeKind.CANCELLED)

    def requeue(self, message_id: int) -> Message:
        """A failed message back to pending with fresh attempts (`InvalidTransition` otherwise)."""
        return self._change(message_id, self.storage.requeue, ChangeKind.REQUEUED)

    def _change(self, message_id: int, write: Callable[[int, Any], Message], kind: ChangeKind) -> Message:
        now = self.clock.now()
        with self.storage.write_transaction():
            message = write(message_id, now)
            self.storage.announce([Change(kind, message.phone, message.id, message.id)], now)
        return message

    # -- reads and the end ------------------------------------------------------------------

    def get(self, message_id: int) -> Message:
        """One message with its attempts (`MessageNotFound` if there is none)."""
        return self.storage.get(message_id)

    def close(self) -> None:
        """Close every connection this producer opened."""
        self.storage.close_all()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


class AsyncProducer:
    """A `Producer` for asyncio web apps: every call runs off the event loop.

        producer = await AsyncProducer.open("postgresql://app@db/postroom")
        message_id = await producer.enqueue(phone="+15550001", user_id=42, text="hi")
        await producer.close()
    """

    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    @classmethod
    async def open(cls, database: str | Any, **options: Any) -> AsyncProducer:
        """Open a producer (the schema check is I/O: off the loop)."""
        return cls(await asyncio.to_thread(Producer, database, **options))

    async def enqueue(self, phone: str, user_id: str | int, text: str = "", **fields: Any) -> int:
        """`Producer.enqueue`."""
        return await self._off_loop(self.producer.enqueue, phone, user_id, text, **fields)

    async def enqueue_batch(self, messages: Sequence[Enqueue]) -> list[int]:
        """`Producer.enqueue_batch`."""
        return await self._off_loop(self.producer.enqueue_batch, messages)

    async def broadcast(self, recipients: Sequence[tuple[str, str | int]], text: str = "",
                        **fields: Any) -> list[int]:
        """`Producer.broadcast`."""
        return await self._off_loop(self.producer.broadcast, recipients, text, **fields)

    async def cancel(self, message_id: int) -> Message:
        """`Producer.cancel`."""
        return await self._off_loop(self.producer.cancel, message_id)

    async def requeue(self, message_id: int) -> Message:
        """`Producer.requeue`."""
        return await self._off_loop(self.producer.requeue, message_id)

    async def get(self, message_id: int) -> Message:
        """`Producer.get`."""
        return await self._off_loop(self.producer.get, message_id)

    async def close(self) -> None:
        """`Producer.close`."""
        await self._off_loop(self.producer.close)

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.close()

    @staticmethod
    async def _off_loop(call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await asyncio.to_thread(call, *args, **kwargs)

