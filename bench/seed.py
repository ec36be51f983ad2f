"""The seed design, as a baseline: one synchronous write per state change, each its own transaction.

What the project started from: one pykka actor per account, and every change of a
message written at once through peewee by whoever makes it, each in its own
transaction (so each with its own fsync):

    enqueue      INSERT                       (the caller's thread, one commit)
    claim        UPDATE status='processing'   (the account's thread, one commit)
    outcome      UPDATE status='completed'    (the account's thread, one commit)

Same table (postroom's `message_queue`, created by postroom's own schema code) and
same connection settings (postroom's `open_database`: WAL, synchronous=FULL,
busy timeout, BEGIN IMMEDIATE), so the difference measured is the design, not the
configuration. Boot loads every open row with one query, then hands each to its
account's actor. The benchmark's messages all have one priority, so
an account's inbox order (FIFO) is already the send order.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pykka

from bench._common import Deliveries
from postroom_common import Status
from storage import Storage, open_database
from storage.models import MessageRow

__all__ = ["SeedQueue"]


@dataclass(frozen=True, slots=True)
class _Deliver:
    """A committed message for an account's actor."""

    id: int
    """Row id."""
    index: int
    """The benchmark's message number (the text)."""


class _SeedAccount(pykka.ThreadingActor):
    """One account: claim, send, record, each write committed before the next step."""

    use_daemon_thread = True

    def __init__(self, phone: str, queue: SeedQueue) -> None:
        super().__init__()
        self.phone, self.queue = phone, queue

    def on_receive(self, message: Any) -> None:
        if not self.queue.stopping.is_set():
            self.queue.process(self.phone, message)

    def on_stop(self) -> None:
        self.queue.db.close()  # this thread's connection


class SeedQueue:
    """A minimal queue in the seed's design, with a no-op sender reporting to `deliveries`."""

    def __init__(self, path: Path, deliveries: Deliveries, database: Any = None,
                 dispatch: bool = True) -> None:
        self.db = database if database is not None else open_database(f"sqlite:///{path}")
        self.dispatch = dispatch  # False: enqueue only writes (to time the enqueue path alone)
        store = Storage(self.db)
        store.create_schema()
        self.Row: type[MessageRow] = store.Row
        self.deliveries = deliveries
        self.stopping = threading.Event()
        self._actors: dict[str, pykka.ActorRef[_SeedAccount]] = {}
        self._lock = threading.Lock()
        # Writers take turns on a lock instead of SQLite's busy handler, which sleeps and
        # starves some threads past the busy timeout once hundreds of accounts write. That
        # makes this baseline faster than a naive seed, never slower: ratios stay honest.
        self._write = threading.Lock()

    # -- the door in -----------------------------------------------------------------

    def enqueue(self, index: int, phone: str) -> int:
        """Insert one message in its own transaction, then hand it to its account."""
        now = datetime.now(UTC)
        with self._write, self.db.atomic():
            row_id = int(self.Row.insert(
                phone=phone, user_id="u", text=str(index), priority=1, status=Status.PENDING.value,
                created_at=now, available_at=now, attempts=0, max_attempts=5, updated_at=now,
            ).execute())
        if self.dispatch:
            self._actor(phone).tell(_Deliver(row_id, index))
        return row_id

    def boot(self) -> None:
        """The seed's start: read every open row in send order, then hand each to its account."""
        query = (self.Row.select(self.Row.id, self.Row.phone, self.Row.text)
                 .where(self.Row.status.in_([Status.PENDING.value, Status.RETRYING.value]))
                 .order_by(self.Row.phone, self.Row.priority, self.Row.id))
        for row in list(query):
            self._actor(row.phone).tell(_Deliver(row.id, int(row.text)))

    # -- an account's step (in its actor's thread) -----------------------------------

    def process(self, phone: str, message: _Deliver) -> None:
        now = datetime.now(UTC)
        with self._write, self.db.atomic():
            self.Row.update(status=Status.PROCESSING.value, attempts=self.Row.attempts + 1,
                            updated_at=now).where(self.Row.id == message.id).execute()
        self.deliveries.record(message.index, phone)  # the no-op sender
        done = datetime.now(UTC)
        with self._write, self.db.atomic():
            self.Row.update(status=Status.COMPLETED.value, completed_at=done,
                            updated_at=done).where(self.Row.id == message.id).execute()

    # -- lifecycle -------------------------------------------------------------------

    def completed(self) -> int:
        """Rows whose completion is committed."""
        return int(self.Row.select().where(self.Row.status == Status.COMPLETED.value).count())

    def stop(self) -> None:
        """Stop every account (the rest of their inboxes is skipped) and close connections."""
        self.stopping.set()
        with self._lock:
            refs = list(self._actors.values())
            self._actors.clear()
        pykka.get_all([ref.stop(block=False) for ref in refs])
        self.db.close()

    def _actor(self, phone: str) -> pykka.ActorRef[_SeedAccount]:
        with self._lock:
            ref = self._actors.get(phone)
            if ref is None:
                ref = self._actors[phone] = _SeedAccount.start(phone, self)
            return ref
