"""The plain actor chain plus the SQL postroom's invariants need: the floor of any design
that keeps them in one process.

`bench/chain.py` measures the hand-offs alone. This is the same chain (its accounts,
its queue, its send pool) whose writer also writes what postroom must write per message,
with postroom's schema and pragmas (WAL, `synchronous=FULL`), through `sqlite3`
directly, in one transaction per drain of its inbox (group commit), and acts on a write
only after its commit (invariants 1 and 2: an answer, a routing or a send waits for it):

- an enqueue inserts its row (the id read from the table, as postroom's producers share
  the file);
- a claim reads the rows it claims (open and due?) and the account's pause, and marks
  them `processing` with the attempt counted;
- an outcome reads the attempt still in flight and marks the row `completed`.

Left out, on purpose: everything postroom does besides these statements and hand-offs
(validation, the account machine, pacing, retries, timeouts, logs, the owner lock's
check, crash recovery). postroom's share of this floor is the share of its time that
its own Python, not the writes or the hand-offs, leaves on the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pykka

from bench.chain import (
    MAX_BATCH,
    NORMAL,
    ChainQueue,
    ChainWriter,
    Completed,
    Insert,
    Item,
    Launch,
    RecordAndClaim,
    Recorded,
    ended_send,
    open_launch,
    running_writer,
)
from storage import Storage, open_database
from storage._sql import chunks

__all__ = ["FloorWriter", "open_floor"]

#: What postroom gives a message enqueued with default settings.
_MAX_ATTEMPTS = 3
_OPEN = ("pending", "retrying")
_INSERT = ("INSERT INTO message_queue (id, phone, user_id, text, attachment, priority, status,"
           " created_at, scheduled_at, available_at, attempts, max_attempts, updated_at,"
           " idempotency_key) VALUES (?, ?, 'u', ?, NULL, ?, 'pending', ?, NULL, ?, 0, ?, ?, NULL)")
_CLAIM = ("UPDATE message_queue SET status = 'processing', attempts = ?, updated_at = ?,"
          " claims = claims + 1, claimed_at = ?, claim_epoch = NULL WHERE id = ?")
_RECORD = ("UPDATE message_queue SET status = 'completed', attempts = ?, completed_at = ?,"
           " updated_at = ?, interrupted = 0 WHERE id = ?")


class FloorWriter(ChainWriter):
    """The chain's writer, writing postroom's rows: effects wait for the drain's commit."""

    def __init__(self, launch: Launch, completed: Completed, path: Path) -> None:
        super().__init__(launch, completed)
        self.path = path
        self.inserts: list[tuple[int, str]] = []
        self.replies: list[tuple[Callable[[int], None], int]] = []
        self.claims: list[tuple[pykka.ActorRef[Any], Item]] = []
        self.records: list[tuple[pykka.ActorRef[Any], Item, bool]] = []  # (account, item, claims too)
        self.held = 0

    def on_start(self) -> None:
        self.db = open_database(f"sqlite:///{self.path}")  # postroom's pragmas, in this thread
        Storage(self.db).create_schema()
        self.connection = self.db.connection()

    def on_stop(self) -> None:
        super().on_stop()
        self.db.close()

    def on_receive(self, message: Any) -> Any:
        match message:
            case Insert(items, reply):
                self.inserts.extend(items)
                if reply is not None:
                    self.replies.append((reply, len(items)))
            case RecordAndClaim(account, record, claim):
                if record is not None:
                    self.records.append((account, record, claim is not None))
                elif claim is None:
                    account.tell(Recorded(None))
                if claim is not None:
                    self.claims.append((account, claim))
            case _:
                raise TypeError(f"floor writer cannot handle {type(message).__name__}")
        self.held += 1
        if self.held >= MAX_BATCH or self.actor_inbox.empty():
            self._commit()

    def _commit(self) -> None:
        sql, at = self.connection, _micros_now()
        inserts, replies, claims, records = self.inserts, self.replies, self.claims, self.records
        self.inserts, self.replies, self.claims, self.records, self.held = [], [], [], [], 0
        sql.execute("BEGIN IMMEDIATE")
        (top,) = sql.execute("SELECT COALESCE(MAX(id), 0) FROM message_queue").fetchone()
        new = [Item(phone, str(index), NORMAL, top + step) for step, (index, phone) in enumerate(inserts, 1)]
        sql.executemany(_INSERT, [(item.id, item.phone, item.text.encode(), NORMAL, at, at, _MAX_ATTEMPTS, at)
                                  for item in new])
        in_flight = _select(sql, "SELECT id, attempts FROM message_queue WHERE status = 'processing'"
                                 " AND id IN", [item.id for _, item, _ in records])
        sql.executemany(_RECORD, [(in_flight[item.id][1], at, at, item.id) for _, item, _ in records
                                  if item.id in in_flight])
        rows = _select(sql, "SELECT id, phone, status, available_at, attempts FROM message_queue WHERE id IN",
                       [item.id for _, item in claims])
        paused = _paused(sql, sorted({item.phone for _, item in claims}), at)
        due = [(account, item) for account, item in claims
               if rows[item.id][2] in _OPEN and rows[item.id][3] <= at and item.phone not in paused]
        if len(due) != len(claims):  # the floor's workload claims only what it just inserted
            raise RuntimeError(f"{len(claims) - len(due)} claims found their row not open and due")
        sql.executemany(_CLAIM, [(rows[item.id][4] + 1, at, at, item.id) for _, item in due])
        sql.execute("COMMIT")
        self.completed.add(len(records))
        for reply, count in replies:
            reply(count)
        for item in new:
            self.new.setdefault(item.phone, []).append(item)
        self._route()
        for account, _, claims_too in records:
            if not claims_too:
                account.tell(Recorded(None))
        for account, item in due:
            self.launch(item, ended_send(account, item))


def _select(sql: Any, query: str, ids: list[int]) -> dict[int, tuple[Any, ...]]:
    """Rows by id (the first column), read in lists of ids as postroom's queries read them."""
    found: dict[int, tuple[Any, ...]] = {}
    for chunk, marks in chunks(ids):
        found.update((row[0], row) for row in sql.execute(f"{query} ({marks})", chunk))
    return found


def _paused(sql: Any, phones: list[str], at: int) -> set[str]:
    """Those of `phones` whose account has a pause in force at `at`."""
    paused: set[str] = set()
    for chunk, marks in chunks(phones):
        paused.update(phone for (phone,) in sql.execute(
            "SELECT phone FROM account_state WHERE (paused_until > ? OR paused_until IS NULL)"
            f" AND phone IN ({marks})", (at, *chunk)))
    return paused


def _micros_now() -> int:
    return time.time_ns() // 1000


@contextmanager
def open_floor(way: str, record: Callable[[int, str], None], batch: int, path: Path) -> Iterator[ChainQueue]:
    """A running floor on the SQLite file `path`, enqueued and sent `way` (the chain's)."""
    with open_launch(way, record) as (launch, loop), \
            running_writer(lambda completed: FloorWriter.start(launch, completed, path), way, batch,
                           loop) as queue:
        yield queue
