"""The storage contract: every query postroom runs, on SQLite and PostgreSQL alike.

Backend differences are decided once, in `storage._sql.Dialect`. Writes run only inside
`write_transaction()` and only from the persistence actor (the single writer);
reads may run from any thread, each on its own connection. Every driver error
leaves this module as `StorageError`, with the driver's exception as its cause.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import peewee

from postroom_common.buckets import bucket_of
from postroom_common.domain import (
    FINAL_STATUSES,
    OPEN_STATUSES,
    AccountPause,
    AccountView,
    Attempt,
    Change,
    ChangeKind,
    Delivery,
    Message,
    MessageFilter,
    NewBroadcast,
    NewMessage,
    OpenWork,
    Outcome,
    OwnerState,
    Priority,
    QueueStats,
    Status,
    Transition,
)
from postroom_common.errors import (
    DatabaseLocked,
    EncryptionKeyError,
    IdempotencyConflict,
    InvalidTransition,
    MessageNotFound,
    OwnershipLost,
    PostroomError,
    StorageError,
)
from postroom_common.logs import get_logger
from storage import schema
from storage._sql import Dialect, chunks
from storage._watch import cut_calls_at
from storage.crypto import (
    KEY_FACT_PREFIX,
    Keyring,
    decode_attachment,
    decode_text,
    encode_attachment,
    encode_text,
    keyring_from_environment,
    missing_keys_error,
)
from storage.feed import INITIAL_GAPS, FeedCursor
from storage.listen import ChangeListener
from storage.models import (
    ATTEMPTS_KEPT,
    CHANGES_CHANNEL,
    CREATED_BY_DEMO,
    DEMO_KEY_PREFIX,
    IN_FLIGHT,
    INTERRUPTED,
    OPEN_ROWS,
    POISON,
    POISON_AFTER,
    WHOLE_DATABASE,
    AccountRow,
    AttemptRow,
    BucketRow,
    ChangeRow,
    MessageRow,
    MetaRow,
    NodeRow,
    OwnerRow,
    from_micros,
    to_micros,
)
from storage.nodes import NodeQueries
from storage.owner import (
    CLEANUP_LOCK_KEY,
    LOCK_HOLDER_QUERY,
    OWNER_LOCK_KEY,
    OwnerLock,
    file_identity,
    flock_holder,
    sqlite_file,
)

try:
    import psycopg

    _DRIVER_ERRORS: tuple[type[BaseException], ...] = (
        peewee.PeeweeException,
        sqlite3.Error,
        psycopg.Error,
    )
    _DRIVER_MODULES: tuple[Any, ...] = (psycopg,)
except ImportError:  # the [postgres] extra is optional
    _DRIVER_ERRORS = (peewee.PeeweeException, sqlite3.Error)
    _DRIVER_MODULES = ()

log = get_logger("postroom.storage")

_OPEN = tuple(s.value for s in OPEN_STATUSES)
_FINAL = tuple(s.value for s in FINAL_STATUSES)
_INSERT_COLUMNS = (
    "id, phone, user_id, text, attachment, priority, status, created_at, scheduled_at, "
    "available_at, attempts, max_attempts, updated_at, idempotency_key"
)
#: What a `Message` holds: the select list of every query that returns messages (raw SQL,
#: no peewee model per row). `_message` unpacks a row by position, in this order.
_MESSAGE_COLUMNS = _INSERT_COLUMNS + ", last_error, completed_at"
#: Positions in a row of `_MESSAGE_COLUMNS` that a claim reads or changes.
_ID, _PHONE, _STATUS, _AVAILABLE_AT, _ATTEMPTS, _UPDATED_AT = 0, 1, 6, 9, 10, 12
_ATTEMPT_COLUMNS = "message_id, slot, number, attempt, started_at, ended_at, outcome, error"
#: A message's attempt of claim number n replaces the one of claim n - ATTEMPTS_KEPT.
_ATTEMPT_UPSERT = (" ON CONFLICT (message_id, slot) DO UPDATE SET number = excluded.number,"
                   " attempt = excluded.attempt, started_at = excluded.started_at,"
                   " ended_at = excluded.ended_at, outcome = excluded.outcome, error = excluded.error")
# An account_state row pauses its account until paused_until, or (NULL) until it is lifted.
#: Names a key rows are encrypted under (`storage.crypto`): once, whoever writes under it again.
_NAME_KEY = "INSERT INTO postroom_meta (key, value) VALUES (?, 1) ON CONFLICT (key) DO NOTHING"
_PAUSES_IN_FORCE = ("SELECT phone, paused_until, reason FROM account_state"
                    " WHERE (paused_until > ? OR paused_until IS NULL)")


#: Seconds between two checks, before a write, that this process still holds its owner lock.
OWNER_VERIFY_EVERY = 5.0


class _Reconnect:
    """How soon a new connection may be tried after one failed: a database that is down is
    not asked thousands of times a second (each account and each enqueue would try), and
    the wait grows from `FIRST` to `MOST` while it stays down."""

    FIRST = 0.05
    MOST = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wait = 0.0
        self._not_before = 0.0
        self._error = ""

    def before_connect(self) -> None:
        with self._lock:
            left = self._not_before - time.monotonic()
            if left > 0:
                raise StorageError(f"the database is unreachable ({self._error}); "
                                   f"the next connection is tried in {left:.2f} s")

    def failed(self, error: str) -> None:
        with self._lock:
            self._wait = min(self.MOST, max(self.FIRST, 2 * self._wait))
            self._not_before = time.monotonic() + self._wait
            self._error = error

    def succeeded(self) -> None:
        with self._lock:
            self._wait, self._not_before = 0.0, 0.0


_Model = TypeVar("_Model", bound=peewee.Model)
_T = TypeVar("_T")


def _bound(model: type[_Model], db: peewee.Database, **options: Any) -> type[_Model]:
    """A subclass of `model` bound to `db`, so two databases in one process never share a binding."""
    meta = type("Meta", (), {"database": db, "table_name": model._meta.table_name, **options})
    return cast(type[_Model], type(model.__name__, (model,), {"Meta": meta, "__module__": __name__}))


class Storage(NodeQueries):
    """The queries of postroom over one database.

    With an `owner` (the supervisor's lock), every commit is followed by its cheap check:
    once it fails (the SQLite file was deleted or replaced) every later read and write is
    refused with `OwnershipLost`, so nothing more is acknowledged from a file nobody will read.

    `keys`: what encrypts the text and attachment of the rows it writes and decrypts those it
    reads (`storage.crypto`); by default those of `POSTROOM_ENCRYPTION_KEYS`, read once here
    (`EncryptionKeyError` for a value that is not a key); None: plain.
    """

    def __init__(self, db: peewee.Database, owner: OwnerLock | None = None,
                 keys: Keyring | Literal["environment"] | None = "environment") -> None:
        self.keys = keyring_from_environment() if keys == "environment" else keys
        self.db = db
        self._owner = owner
        self._owner_verified_at = -OWNER_VERIFY_EVERY
        self._lost: str | None = None  # why the database was lost, once it was
        self._reconnect = _Reconnect()
        self._opened: list[tuple[threading.Thread, Any]] = []  # every connection open, by thread
        self._opened_lock = threading.Lock()
        self._closed = False  # `close_all` ran: no connection is opened again
        self.Row = _bound(MessageRow, db, indexes=MessageRow._meta.indexes)
        self.Account = _bound(AccountRow, db)
        self.Facts = _bound(MetaRow, db)
        self.Owner = _bound(OwnerRow, db)
        self.Attempts = _bound(AttemptRow, db)
        self.Changes = _bound(ChangeRow, db)
        self.Nodes = _bound(NodeRow, db)
        self.Buckets = _bound(BucketRow, db)
        self._dialect = Dialect(db)
        marks = ", ".join("?" * len(_INSERT_COLUMNS.split(",")))
        self._insert_sql = self._dialect.sql(
            f"INSERT INTO message_queue ({_INSERT_COLUMNS}) VALUES ({marks})")
        self._attempt_sql = self._dialect.sql(
            f"INSERT INTO message_attempts ({_ATTEMPT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        ) + _ATTEMPT_UPSERT

    # -- lifecycle -------------------------------------------------------------------

    def create_schema(self, *, keep_demo_mark: bool = False) -> None:
        """Create or upgrade the schema to this code's version (`storage.schema`), in one
        transaction; `SchemaMismatch` for a database newer than this code (nothing written).
        And remove `postroom demo`'s mark: a database a real owner has used is a real queue,
        which the demo refuses. `keep_demo_mark`: the demo's own supervisor."""
        self.migrate(keep_demo_mark=keep_demo_mark)

    def migrate(self, *, keep_demo_mark: bool = True) -> tuple[int | None, Sequence[schema.Migration]]:
        """`create_schema`, saying what it did: the version found and the migrations run
        (`postroom migrate` starts no supervisor: it keeps the demo's mark)."""
        with self._guard(), self.db.atomic():
            done = self._migrate()
            unmarked = 0 if keep_demo_mark else self._unmark_demo()
        if unmarked:
            log.info("storage.demo_mark_removed",
                     reason="a database postroom demo created is used as a real queue: the demo "
                            "will refuse it from now on")
        return done

    def _unmark_demo(self) -> int:
        return int(self.Facts.delete().where(self.Facts.key == CREATED_BY_DEMO).execute())

    def check_schema(self) -> None:
        """`SchemaMismatch` unless the database's schema is this code's version (reads only):
        for processes that must not migrate (producers, read commands)."""
        with self._guard():
            schema.check(self.db, self._dialect.is_sqlite)

    # -- encryption at rest (storage.crypto) -----------------------------------------

    def check_keys(self) -> None:
        """`EncryptionKeyError` unless this storage's keys include every key the database's
        messages were written under (postroom_meta names each): what a process that reads or
        writes messages asks at its start, before anything else (reads only)."""
        with self._guard():
            rows = self.db.execute_sql(self._dialect.sql(
                f"SELECT key FROM postroom_meta WHERE substr(key, 1, {len(KEY_FACT_PREFIX)}) = ?"),
                (KEY_FACT_PREFIX,)).fetchall()
        used = {str(key)[len(KEY_FACT_PREFIX):] for (key,) in rows}
        missing = used - (self.keys.ids if self.keys is not None else frozenset())
        if missing:
            raise missing_keys_error(sorted(missing), self.keys)

    def not_under_first_key(self, after_id: int, limit: int) -> list[tuple[int, bytes, str | None]]:
        """(id, text, attachment) as stored of the rows after `after_id` whose text or attachment
        is plain or under another key than the first, in id order, at most `limit` (reads only)."""
        where, params = self._not_under_first_key()
        with self._guard():
            rows = self.db.execute_sql(self._dialect.sql(
                f"SELECT id, text, attachment FROM message_queue WHERE id > ? AND {where}"
                " ORDER BY id LIMIT ?"), (after_id, *params, limit)).fetchall()
        return [(int(message_id), bytes(text), attachment) for message_id, text, attachment in rows]

    def _not_under_first_key(self) -> tuple[str, tuple[Any, ...]]:
        keys = self._required_keys()
        text, attachment = keys.text_prefix(), keys.attachment_prefix()
        # Lengths written in: a parameter's type would differ by driver (substr wants integers).
        return (f"(substr(text, 1, {len(text)}) <> ? OR (attachment IS NOT NULL"
                f" AND substr(attachment, 1, {len(attachment)}) <> ?))", (text, attachment))

    def reencrypt(self, rows: Sequence[tuple[int, bytes, bytes, str | None]]) -> int:
        """Write rows' (id, text as read, new text, new attachment) inside write_transaction:
        only those two columns, and only where the text is still as read (another rotation may
        have rewritten it), so that a status, an attempt or a pause written meanwhile stays as
        written. How many rows were written."""
        if not rows:
            return 0
        with self._guard():
            cursor = self.db.cursor()
            cursor.executemany(self._dialect.sql(
                "UPDATE message_queue SET text = ?, attachment = ? WHERE id = ? AND text = ?"),
                [(text, attachment, message_id, was) for message_id, was, text, attachment in rows])
            written = int(cursor.rowcount)
        self._record_key_used()
        return written

    def forget_other_keys(self) -> list[str] | None:
        """Once no row is under another key than the first, remove the other keys' names from
        postroom_meta (inside write_transaction): processes may then start without them. The
        ids forgotten; None (nothing forgotten) while a row still is plain or under another
        key (written meanwhile by a process whose first key is an old one).

        The names go before the rows are looked at: on PostgreSQL a writer naming an old key
        waits for this transaction, and its rows are either seen here or named again after."""
        keys = self._required_keys()
        facts = f"substr(key, 1, {len(KEY_FACT_PREFIX)}) = ? AND key <> ?"
        params = (KEY_FACT_PREFIX, KEY_FACT_PREFIX + keys.primary)
        where, probe = self._not_under_first_key()
        with self._guard():
            others = [str(key) for (key,) in self.db.execute_sql(self._dialect.sql(
                f"SELECT key FROM postroom_meta WHERE {facts}"), params).fetchall()]
            self.db.execute_sql(self._dialect.sql(f"DELETE FROM postroom_meta WHERE {facts}"), params)
            left = self.db.execute_sql(self._dialect.sql(
                f"SELECT 1 FROM message_queue WHERE {where} LIMIT 1"), probe).fetchone()
            if left is not None:
                self._executemany(self._dialect.sql(_NAME_KEY), [(key,) for key in others])
                return None
        return [key[len(KEY_FACT_PREFIX):] for key in others]

    def _required_keys(self) -> Keyring:
        if self.keys is None:
            raise EncryptionKeyError("no encryption key is set: set POSTROOM_ENCRYPTION_KEYS")
        return self.keys

    def schema_version(self) -> int | None:
        """The database's schema version (None: no postroom schema; 0: older than versions)."""
        with self._guard():
            return schema.version_of(self.db, self._dialect.is_sqlite)

    def create_demo_schema(self) -> bool:
        """Create the schema marked as `postroom demo`'s (`is_demo`), in one transaction, if the
        database has none of postroom's tables; False (nothing written) if it has."""
        with self._guard(), self.db.atomic():
            if self.has_schema():
                return False
            self._migrate()
            self.mark_demo()
            return True

    def _migrate(self) -> tuple[int | None, Sequence[schema.Migration]]:
        return schema.migrate(self.db, self._dialect.is_sqlite, self._create_tables)

    def _create_tables(self) -> None:
        """A new database's schema, from today's models."""
        self.db.create_tables([self.Row, self.Account, self.Facts, self.Owner, self.Attempts,
                               self.Changes, self.Nodes, self.Buckets], safe=True)
        if not self._dialect.is_sqlite:
            self.db.execute_sql("CREATE SEQUENCE IF NOT EXISTS message_queue_id_seq")

    def has_schema(self) -> bool:
        """True when any of postroom's tables exists (a database postroom has used)."""
        with self._guard():
            return any(self.db.table_exists(model._meta.table_name)
                       for model in (self.Row, self.Account, self.Facts, self.Owner, self.Attempts,
                                     self.Changes, self.Nodes, self.Buckets))

    def take_ownership(self, holder: str, now: datetime) -> None:
        """Record who owns the database now (what `postroom status` shows), and forget every node
        an earlier owner left: call it holding the exclusive owner lock, before joining."""
        with self._guard(), self.db.atomic():
            self.db.execute_sql(self._dialect.sql(
                "INSERT INTO postroom_owner (scope, epoch, holder, taken_at) VALUES (?, 1, ?, ?)"
                " ON CONFLICT (scope) DO UPDATE SET epoch = postroom_owner.epoch + 1,"
                " holder = excluded.holder, taken_at = excluded.taken_at"),
                (WHOLE_DATABASE, holder, to_micros(now)))
            self.db.execute_sql("DELETE FROM postroom_nodes")

    def _in_flight_with_epochs(self) -> list[tuple[Message, int | None]]:
        """Every row in flight, with the epoch it was claimed under (None: before epochs)."""
        rows = self._rows(f"SELECT {_MESSAGE_COLUMNS}, claim_epoch FROM message_queue WHERE {IN_FLIGHT}", ())
        return [(_message(row, self.keys), row[-1]) for row in rows]

    def is_demo(self) -> bool:
        """True when `postroom demo` created this database (`mark_demo`); reads only."""
        with self._guard():
            if not self.db.table_exists(self.Facts._meta.table_name):
                return False
            return self.Facts.get_or_none(self.Facts.key == CREATED_BY_DEMO) is not None

    def mark_demo(self) -> None:
        """Record that `postroom demo` created this database (inside a transaction)."""
        query = self.Facts.insert(key=CREATED_BY_DEMO, value=1).on_conflict_ignore()
        with self._guard():
            query.execute()

    def not_from_demo(self) -> int:
        """Messages `postroom demo` did not write: those whose idempotency key does not begin
        with `DEMO_KEY_PREFIX` (or that have none); reads only."""
        where = self._dialect.sql("idempotency_key IS NULL OR substr(idempotency_key, 1, ?) <> ?")
        with self._guard():
            cursor = self.db.execute_sql(f"SELECT COUNT(*) FROM message_queue WHERE {where}",
                                         (len(DEMO_KEY_PREFIX), DEMO_KEY_PREFIX))
            return int(cursor.fetchone()[0])

    def empty_tables(self) -> None:
        """Delete every message, pause and fact but the demo's mark (inside write_transaction):
        what a new database holds, ids aside (PostgreSQL's sequence never goes back).

        Only with the owner lock held (`Storage(db, owner=lock)`, whose `write_transaction`
        verifies it), so that no running supervisor's queue is ever emptied.
        """
        if self._owner is None:
            raise PostroomError("empty_tables needs the owner lock: Storage(db, owner=lock), "
                                "the lock taken")
        with self._guard():
            self.Row.delete().execute()
            self.Attempts.delete().execute()
            self.Account.delete().execute()
            kept = [CREATED_BY_DEMO, schema.SCHEMA_VERSION_KEY]
            self.Facts.delete().where(self.Facts.key.not_in(kept)).execute()
            self.Changes.delete().execute()

    def close(self) -> None:
        """Close this thread's connection."""
        if not self.db.is_closed():
            self.db.close()

    def close_all(self) -> None:
        """Close every connection this storage opened, in whatever thread (a stop: the threads
        that used them may still be winding down; the owner lock is released after this), for
        good: a call after this, a read queued before a stop and run after it, say, raises
        `StorageError` instead of opening a connection nobody would close."""
        with self._opened_lock:
            opened, self._opened, self._closed = self._opened, [], True
        _close_connections([connection for _, connection in opened])
        self.db.dispose()  # this thread's, if it had one: already closed above

    def cut_calls_at(self, monotonic: float | None) -> None:
        """PostgreSQL: from `monotonic` on (a stop's instant; None: never), a statement still
        waiting for its answer, or begun after it, has its connection closed."""
        cut_calls_at(self.db.connect_params, monotonic)

    @contextmanager
    def write_transaction(self) -> Iterator[None]:
        """One transaction holding the write lock from its first statement; commits on exit.

        `OwnershipLost` after the commit when the owner's check fails: the commit went to a
        file nobody will read again, and its callers must not be told it is durable.
        """
        fresh = self.db.is_closed()  # the guard opens a new connection: the last one went
        with self._guard():
            self._verify_owner_if_due(fresh)
            self.db.begin()
            try:
                yield
                self.db.commit()
            except BaseException:
                self._rollback_after_failure()
                raise
        self._check_owner()

    def _verify_owner_if_due(self, fresh: bool) -> None:
        """Before writing on a new connection (the last one was lost: the server restarted,
        say), and every `OWNER_VERIFY_EVERY` seconds, ask whether this process still owns the
        database: a PostgreSQL lock dies with its session, and another supervisor may have
        taken it meanwhile. If so, nothing more is written (`OwnershipLost`), ever."""
        if self._owner is None:
            return
        now = time.monotonic()
        if not fresh and now < self._owner_verified_at + OWNER_VERIFY_EVERY:
            return
        try:
            held_all_along = self._owner.verify()
        except StorageError as unreachable:  # the server is not back yet
            self._reconnect.failed(str(unreachable).splitlines()[0])
            raise
        except DatabaseLocked as taken:
            self._lost = (f"another supervisor took the database while this one had lost its "
                          f"connection ({taken}): restart this one, or stop the other")
            raise OwnershipLost(self._lost) from taken
        if not held_all_along:
            log.warning("storage.owner_lock_retaken",
                        reason="the lock's session had ended (the server restarted, or the "
                               "connection dropped); it is held again")
        self._owner_verified_at = now

    def _check_owner(self) -> None:
        if self._owner is None:
            return
        try:
            self._owner.check()
        except OwnershipLost as lost:
            self._lost = str(lost)
            raise

    def _rollback_after_failure(self) -> None:
        # SQLite rolls back by itself on some errors (disk full, I/O error), and then
        # ROLLBACK fails too; the error worth raising is the first one. A connection
        # that cannot roll back is closed: the next transaction opens a fresh one.
        try:
            self.db.rollback()
        except _DRIVER_ERRORS:
            with contextlib.suppress(*_DRIVER_ERRORS):
                self.db.close()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        if self._lost is not None:
            raise OwnershipLost(self._lost)  # a new exception each time: threads share none
        if self.db.is_closed():
            self._connect()
        try:
            yield
        except PostroomError:
            raise
        except _DRIVER_ERRORS as exc:
            if self._drop_lost_connection():
                self._reconnect.failed(_first_line(exc))
            raise StorageError(f"{type(exc).__name__}: {exc}") from exc

    def _connect(self) -> None:
        """Open this thread's connection, unless the last attempt failed too recently or the
        storage is closed."""
        if self._closed:
            raise StorageError(_CLOSED)
        self._reconnect.before_connect()
        try:
            self.db.connect(reuse_if_open=True)
        except _DRIVER_ERRORS as exc:
            self._reconnect.failed(_first_line(exc))
            raise StorageError(f"{type(exc).__name__}: {exc}") from exc
        self._reconnect.succeeded()
        with self._opened_lock:
            closed = self._closed  # meanwhile
            left = [c for thread, c in self._opened if not thread.is_alive()]
            self._opened = [(t, c) for t, c in self._opened if t.is_alive() and not _is_closed(c)]
            if not closed:
                self._opened.append((threading.current_thread(), self.db.connection()))
        # A thread that has exited (a pool's idle thread) never uses its connection again, which
        # holds file descriptors (two on SQLite in WAL mode) or a server's session until closed.
        _close_connections(left)
        if closed:
            with contextlib.suppress(*_DRIVER_ERRORS):
                self.db.close()
            raise StorageError(_CLOSED)

    def _drop_lost_connection(self) -> bool:
        """After a driver error: close this thread's connection if the server dropped it (a
        restart), so that the next statement opens a new one. True if it was dropped.

        A connection only in error (a statement cancelled by a timeout, in a transaction
        that rolls back next) stays: the server did answer."""
        if self._dialect.is_sqlite or self.db.is_closed():
            return False
        connection = self.db.connection()
        if not _is_broken(connection):
            return False
        try:
            self.db.close()
        except _DRIVER_ERRORS:
            with contextlib.suppress(Exception):  # closed for the driver too: none is left to the GC
                connection.close()
            self.db.dispose()  # forget it: the socket is gone already
        return True

    # -- writes (inside write_transaction, persistence actor only) -------------------

    def insert(self, news: Sequence[NewMessage], *,
               all_or_nothing: bool = False) -> list[int | Message | IdempotencyConflict]:
        """Insert new messages; answers, in order: the new row's id, or for a repeated
        idempotency key the message first written with it (`IdempotencyConflict` when
        the payload differs). A key repeated inside `news` answers the first one's id.
        `all_or_nothing`: a conflict raises `IdempotencyConflict` naming its position, and
        nothing is written (a batch is refused whole; the transaction goes on).

        No `Message` is built here: building one per row of a big broadcast would hold the
        write transaction (and every caller's answer); the caller builds them after the
        commit with `NewMessage.as_pending`.
        """
        if isinstance(news, NewBroadcast) and news.template.idempotency_key is None:
            ids = self._dialect.allocate_ids(len(news)) if news else []
            self._insert_broadcast(ids, news)  # no keys: every row is new
            return list(ids)
        known = self._by_idempotency_keys([n.idempotency_key for n in news if n.idempotency_key])
        plan: list[int | Message | IdempotencyConflict] = []  # an int indexes `fresh`
        fresh: list[NewMessage] = []
        first_in_batch: dict[str, int] = {}
        for new in news:
            key = new.idempotency_key
            if key is not None and key in known:
                earlier = known[key]
                plan.append(earlier if new.same_payload(earlier) else IdempotencyConflict())
            elif key is not None and key in first_in_batch:
                index = first_in_batch[key]
                plan.append(index if new.same_payload(fresh[index]) else IdempotencyConflict())
            else:
                if key is not None:
                    first_in_batch[key] = len(fresh)
                plan.append(len(fresh))
                fresh.append(new)
        if all_or_nothing:
            _refuse_conflict(news, plan)
        ids = self._dialect.allocate_ids(len(fresh)) if fresh else []
        self._insert_pending(ids, fresh)
        return [ids[step] if isinstance(step, int) else step for step in plan]

    def _insert_pending(self, ids: Sequence[int], news: Sequence[NewMessage]) -> None:
        # A batch shares one enqueue instant (and often one schedule): convert each once.
        micros = functools.lru_cache(maxsize=64)(_micros)
        self._insert_rows([(message_id, n.phone, n.user_id, *_shared_values(n, self.keys, micros),
                            n.idempotency_key)
                           for message_id, n in zip(ids, news, strict=True)])

    def _insert_broadcast(self, ids: Sequence[int], broadcast: NewBroadcast) -> None:
        """A broadcast without a key, written from its shared fields (a keyed one is taken
        apart by `insert`: each recipient's key is its own)."""
        shared = _shared_values(broadcast.template, self.keys)
        self._insert_rows([(message_id, phone, user_id, *shared, None)
                           for message_id, (phone, user_id) in zip(ids, broadcast.recipients, strict=True)])

    def _insert_rows(self, params: list[tuple[Any, ...]]) -> None:
        if not params:
            return
        with self._guard():
            self.db.cursor().executemany(self._insert_sql, params)
        self._record_key_used()

    def _record_key_used(self) -> None:
        """Name the key this transaction's rows are encrypted under in postroom_meta (what
        `check_keys` reads), in the same transaction: no row is ever under a key not named."""
        if self.keys is not None:
            self._executemany(self._dialect.sql(_NAME_KEY), [(KEY_FACT_PREFIX + self.keys.primary,)])

    def _by_idempotency_keys(self, keys: Sequence[str | None]) -> dict[str | None, Message]:
        if not keys:
            return {}
        found: dict[str | None, Message] = {}
        for chunk, marks in chunks(keys):
            found.update((m.idempotency_key, m) for m in self._fetch(
                f"SELECT {_MESSAGE_COLUMNS} FROM message_queue WHERE idempotency_key IN ({marks})", chunk))
        return found

    def claim(self, ids: Sequence[int], now: datetime,
              epochs: Mapping[int, int] | None = None) -> dict[int, Message]:
        """Move open, due messages to PROCESSING and count the attempt; others are left alone.
        `epochs`: {bucket: epoch} the claimer holds, written on each row claimed (what its own
        reclaims and settlements may touch later).

        The database decides, not the caller's copy: a message cancelled, already sent or
        backing off since the caller loaded it is not claimed, nor one of an account paused
        (by any process: `postroom pause` holds before the owner's next send).
        """
        at = to_micros(now)
        rows = [list(r) for r in self._select_rows(ids) if r[_STATUS] in _OPEN and r[_AVAILABLE_AT] <= at]
        paused = self._paused_among({r[_PHONE] for r in rows}, at)
        if paused:
            rows = [r for r in rows if r[_PHONE] not in paused]
        processing = Status.PROCESSING.value
        for row in rows:
            row[_STATUS], row[_ATTEMPTS], row[_UPDATED_AT] = processing, row[_ATTEMPTS] + 1, at
        sql = self._dialect.sql(
            "UPDATE message_queue SET status = ?, attempts = ?, updated_at = ?, claims = claims + 1,"
            " claimed_at = ?, claim_epoch = ? WHERE id = ?"
        )
        epoch = (epochs or {}).get
        self._executemany(sql, [(processing, r[_ATTEMPTS], at, at, epoch(bucket_of(r[_PHONE])), r[_ID])
                                for r in rows])
        return {row[_ID]: _message(row, self.keys) for row in rows}

    def _paused_among(self, phones: set[str], at: int) -> set[str]:
        """Those of `phones` whose account has a pause in force at `at` (micros)."""
        paused: set[str] = set()
        for chunk, marks in chunks(sorted(phones)):
            with self._guard():
                paused.update(phone for (phone, *_) in self.db.execute_sql(self._dialect.sql(
                    f"{_PAUSES_IN_FORCE} AND phone IN ({marks})"), (at, *chunk)).fetchall())
        return paused

    def record(self, transitions: Sequence[Transition]) -> set[int]:
        """Apply outcomes whose attempt still holds its row (PROCESSING, same attempt number).

        Returns the ids applied; a transition missing from the answer was stale (a late
        result of an attempt that was already recovered or cancelled). Hot path: only the
        attempt numbers of the rows still in flight are read.
        """
        held = self._attempts_in_flight([t.id for t in transitions])
        applied = [t for t in transitions if t.id in held and held[t.id][0] == t.attempt]
        sql = self._dialect.sql(
            "UPDATE message_queue SET status = ?, attempts = ?, last_error = COALESCE(?, last_error),"
            " available_at = COALESCE(?, available_at), completed_at = ?, updated_at = ?,"
            " interrupted = 0 WHERE id = ?"
        )
        self._executemany(sql, [
            (t.status.value, t.attempt - 1 if t.give_back else t.attempt, t.error,
             _micros(t.available_at), to_micros(t.at) if t.status in FINAL_STATUSES else None,
             to_micros(t.at), t.id)
            for t in applied
        ])
        self._executemany(self._attempt_sql, [
            _attempt_row(t.id, held[t.id][1], held[t.id][2], t.attempt, to_micros(t.at), outcome, t.error)
            for t in applied if (outcome := _outcome_of(t, held[t.id][1])) is not None])
        return {t.id for t in applied}

    def _write_states(self, messages: Sequence[Message]) -> None:
        """Write a user's change (cancel, requeue): it ends the message's run of crashes."""
        sql = self._dialect.sql(
            "UPDATE message_queue SET status = ?, attempts = ?, last_error = ?, available_at = ?, "
            "completed_at = ?, updated_at = ?, interrupted = 0 WHERE id = ?"
        )
        params = [
            (m.status.value, m.attempts, m.last_error, to_micros(m.available_at),
             _micros(m.completed_at), to_micros(m.updated_at), m.id)
            for m in messages
        ]
        self._executemany(sql, params)

    def cancel(self, message_id: int, now: datetime) -> Message:
        """Cancel a message that has not been handed to the sender."""
        message = self._one_for_update(message_id)
        if message.status not in OPEN_STATUSES:
            raise InvalidTransition(f"message {message_id} is {message.status.value}; only pending "
                                    "or retrying messages can be cancelled")
        cancelled = replace(message, status=Status.CANCELLED, completed_at=now, updated_at=now)
        self._write_states([cancelled])
        return cancelled

    def requeue(self, message_id: int, now: datetime) -> Message:
        """Give a failed message a fresh set of attempts, due now."""
        message = self._one_for_update(message_id)
        if message.status is not Status.FAILED:
            raise InvalidTransition(f"message {message_id} is {message.status.value}; only failed "
                                    "messages can be requeued")
        requeued = replace(message, status=Status.PENDING, attempts=0, available_at=now,
                           completed_at=None, updated_at=now)
        self._write_states([requeued])
        return requeued

    def recover_interrupted(self, delivery: Delivery, now: datetime, phone: str | None = None,
                            up_to_epoch: int | None = None) -> list[Message]:
        """Settle rows left PROCESSING by a crash, per the delivery policy; `up_to_epoch`: only
        those claimed under that epoch of their bucket or an older one (never a row a later
        owner of the bucket has in flight).

        At-least-once: retried now, unless the interrupted attempt was the last one.
        At-most-once: failed as interrupted. Returns the rows as written.
        """
        return self.settle_interrupted(self.interrupted(phone, up_to_epoch), delivery, now)

    def interrupted(self, phone: str | None = None, up_to_epoch: int | None = None,
                    epoch: int | None = None) -> list[Message]:
        """The rows in PROCESSING (of one account, or all): what `settle_interrupted` settles;
        only those claimed under `epoch`, or under `up_to_epoch` or before, when given."""
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM message_queue WHERE status = ?"
        params: list[Any] = [Status.PROCESSING.value]
        if phone is not None:
            sql, params = sql + " AND phone = ?", [*params, phone]
        if up_to_epoch is not None:
            sql, params = sql + " AND (claim_epoch IS NULL OR claim_epoch <= ?)", [*params, up_to_epoch]
        if epoch is not None:
            sql, params = sql + " AND claim_epoch = ?", [*params, epoch]
        return self._fetch(sql, params)

    def settle_interrupted(self, interrupted: Sequence[Message], delivery: Delivery,
                           now: datetime) -> list[Message]:
        """Settle rows read by `interrupted`, each only if it is still PROCESSING in the attempt
        read: a row another connection recorded or claimed again since is left as it wrote
        it. Each row settled counts one more crash in a row (`interrupted`, what makes a
        suspect of it if it is in flight at the next crash too). Returns the rows really
        changed, as written.

        One UPDATE per row, to know which ones applied: only rows in flight at a crash or in
        a crashed account (a few per account) come here.
        """
        sql = self._dialect.sql(
            "UPDATE message_queue SET status = ?, attempts = ?, last_error = ?, available_at = ?,"
            " completed_at = ?, updated_at = ?, interrupted = interrupted + 1"
            " WHERE id = ? AND status = ? AND attempts = ?")
        changed: list[Message] = []
        ended = self._dialect.sql(
            f"INSERT INTO message_attempts ({_ATTEMPT_COLUMNS}) SELECT id,"
            f" claims - claims / {ATTEMPTS_KEPT} * {ATTEMPTS_KEPT}, claims, attempts,"
            " COALESCE(claimed_at, updated_at), ?, ?, ?"
            " FROM message_queue"
            " WHERE id = ? AND status = ? AND attempts = ?") + _ATTEMPT_UPSERT
        crashes = self._crashes_in_a_row([m.id for m in interrupted])
        with self._guard():
            for message in interrupted:
                self.db.execute_sql(ended, (to_micros(now), Outcome.INTERRUPTED.value, INTERRUPTED,
                                            message.id, Status.PROCESSING.value, message.attempts))
                m = _settle_interrupted(message, delivery, now, crashes.get(message.id, 0) + 1)
                cursor = self.db.execute_sql(sql, (
                    m.status.value, m.attempts, m.last_error, to_micros(m.available_at),
                    _micros(m.completed_at), to_micros(m.updated_at), m.id,
                    Status.PROCESSING.value, message.attempts))
                if cursor.rowcount == 1:
                    changed.append(m)
        return changed

    def _crashes_in_a_row(self, ids: Sequence[int]) -> dict[int, int]:
        """{id: interrupted} of these rows: the crashes in a row their attempts met so far."""
        found: dict[int, int] = {}
        for chunk, marks in chunks(ids):
            with self._guard():
                found.update((int(i), int(n)) for i, n in self.db.execute_sql(self._dialect.sql(
                    f"SELECT id, interrupted FROM message_queue WHERE id IN ({marks})"), chunk).fetchall())
        return found

    def give_back_orphans(self, phone: str, now: datetime, epoch: int | None = None) -> list[int]:
        """The account's rows left PROCESSING go back, due now, their attempt uncounted: for an
        account that holds none of them (a claim committed as its answer was lost). `epoch`: only
        those claimed under it (this node's own, never another's in flight). The ids."""
        orphans = self.interrupted(phone, epoch=epoch)
        sql = self._dialect.sql(
            "UPDATE message_queue SET status = ?, attempts = ?, available_at = ?, updated_at = ?"
            " WHERE id = ? AND status = ? AND attempts = ?")
        self._executemany(sql, [
            (Status.PENDING.value if m.attempts <= 1 else Status.RETRYING.value, m.attempts - 1,
             to_micros(now), to_micros(now), m.id, Status.PROCESSING.value, m.attempts)
            for m in orphans])
        return [m.id for m in orphans]

    def interrupted_again(self) -> list[tuple[int, str]]:
        """(id, phone) of the rows left PROCESSING by a crash whose previous attempt a crash
        had interrupted too (`interrupted`: no outcome since), in id order: to be read before
        `recover_interrupted` settles them."""
        query = (self.Row.select(self.Row.id, self.Row.phone)
                 .where((self.Row.status == Status.PROCESSING.value) & (self.Row.interrupted >= 1))
                 .order_by(self.Row.id))
        with self._guard():
            return [(int(row.id), str(row.phone)) for row in query]

    def announce(self, changes: Sequence[Change], now: datetime) -> None:
        """Tell the owner what this transaction changed (inside write_transaction, by a process
        that does not own the database): entries of the change feed, and on PostgreSQL a
        notification, sent at the commit, one per transaction however many changes."""
        if not changes:
            return
        self._executemany(self._dialect.sql(
            "INSERT INTO postroom_changes (kind, phone, first_id, last_id, at) VALUES (?, ?, ?, ?, ?)"),
            [(c.kind.value, c.phone, c.first_id, c.last_id, to_micros(now)) for c in changes])
        self._notify()

    def _notify(self) -> None:
        """PostgreSQL: wake every listening process at the commit (one notification a transaction)."""
        if not self._dialect.is_sqlite:
            with self._guard():
                self.db.execute_sql(f"NOTIFY {CHANGES_CHANNEL}")

    def listener(self, on_change: Callable[[], None]) -> ChangeListener | None:
        """A thread (not started) that calls `on_change` at each change another process
        commits; None on SQLite, which has no notifications (the owner polls the feed)."""
        if self._dialect.is_sqlite:
            return None
        return ChangeListener(self.db, on_change)

    def feed_cursor(self, now_mono: float) -> FeedCursor:
        """A cursor at the feed's end: read before the rows it stands for (boot), so that any
        change committed after that read is read from the feed."""
        with self._guard():
            (high,) = self.db.execute_sql("SELECT COALESCE(MAX(seq), 0) FROM postroom_changes").fetchone()
            present = [seq for (seq,) in self.db.execute_sql(self._dialect.sql(
                "SELECT seq FROM postroom_changes WHERE seq > ?"), (int(high) - INITIAL_GAPS,)).fetchall()]
        return FeedCursor(int(high), present, now_mono)

    def read_changes(self, cursor: FeedCursor, now_mono: float, limit: int = 1000) -> list[Change]:
        """The feed's entries after `cursor` (and in its gaps), in order, at most `limit`;
        the cursor moves past them."""
        gaps = cursor.gaps
        marks = ", ".join("?" * len(gaps))
        where = f"seq > ? OR seq IN ({marks})" if gaps else "seq > ?"
        with self._guard():
            rows = self.db.execute_sql(self._dialect.sql(
                f"SELECT seq, kind, phone, first_id, last_id FROM postroom_changes WHERE {where}"
                " ORDER BY seq LIMIT ?"), (cursor.high, *gaps, limit)).fetchall()
        fresh = set(cursor.read([row[0] for row in rows], now_mono))
        return [Change(ChangeKind(kind), phone, first_id, last_id, seq)
                for seq, kind, phone, first_id, last_id in rows if seq in fresh]

    def trim_changes(self, before: datetime) -> int:
        """Delete the feed's entries written before `before` (inside write_transaction)."""
        with self._guard():
            cursor = self.db.execute_sql(self._dialect.sql("DELETE FROM postroom_changes WHERE at < ?"),
                                         (to_micros(before),))
            return int(cursor.rowcount)

    def open_in_range(self, first_id: int, last_id: int, limit: int) -> list[Message]:
        """Open messages with ids from `first_id` to `last_id`, at most `limit`, in id order:
        the rows a change of the feed names, as they are now."""
        return self._fetch(f"SELECT {_MESSAGE_COLUMNS} FROM message_queue WHERE id >= ? AND id <= ?"
                           f" AND {OPEN_ROWS} ORDER BY id LIMIT ?", (first_id, last_id, limit))

    def set_pause(self, pause: AccountPause, now: datetime) -> None:
        """Persist an account-wide pause (replacing an earlier one)."""
        row = {"phone": pause.phone, "paused_until": pause.until, "reason": pause.reason,
               "updated_at": now}
        query = self.Account.insert(**row).on_conflict(
            conflict_target=[self.Account.phone],
            update={self.Account.paused_until: pause.until, self.Account.reason: pause.reason,
                    self.Account.updated_at: now})
        with self._guard():
            query.execute()

    def clear_pause(self, phone: str) -> bool:
        """Lift an account's pause; True if there was one."""
        with self._guard():
            return bool(self.Account.delete().where(self.Account.phone == phone).execute())

    def pause(self, phone: str, now: datetime) -> AccountPause | None:
        """The account's pause in force at `now`, if any."""
        with self._guard():
            row = self.db.execute_sql(self._dialect.sql(_PAUSES_IN_FORCE + " AND phone = ?"),
                                      (to_micros(now), phone)).fetchone()
        return None if row is None else _pause_from_row(row)

    def pauses(self, now: datetime) -> list[AccountPause]:
        """Every pause still in force at `now`."""
        with self._guard():
            rows = self.db.execute_sql(self._dialect.sql(_PAUSES_IN_FORCE), (to_micros(now),)).fetchall()
        return [_pause_from_row(row) for row in rows]

    def delete_finished_before(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` final rows that finished before `cutoff`; returns how many.
        PostgreSQL: one process at a time (a transaction lock): 0 while another one deletes,
        so that the nodes of a database do not all run the same cleanup."""
        oldest = self.Row.select(self.Row.id).where(self._finished_before(cutoff)).limit(limit)
        with self._guard():
            if not self._dialect.is_sqlite:
                (mine,) = self.db.execute_sql("SELECT pg_try_advisory_xact_lock(%s)",
                                              (CLEANUP_LOCK_KEY,)).fetchone()
                if not mine:
                    return 0
            ids = [row.id for row in oldest]
            if not ids:
                return 0
            self._dialect.before_delete()
            for chunk, _ in chunks(ids):  # a message's history goes with it
                self.Attempts.delete().where(self.Attempts.message_id.in_(chunk)).execute()
                self.Row.delete().where(self.Row.id.in_(chunk)).execute()
        return len(ids)

    def count_finished_before(self, cutoff: datetime) -> int:
        """How many rows `delete_finished_before` would delete, however many chunks it takes."""
        with self._guard():
            return int(self.Row.select().where(self._finished_before(cutoff)).count())

    def _finished_before(self, cutoff: datetime) -> peewee.Expression:
        return self.Row.status.in_(_FINAL) & (self.Row.completed_at < cutoff)

    def ids_in_status(self, statuses: Iterable[Status], *, phone: str | None = None,
                      error_contains: str | None = None, after_id: int = 0, limit: int = 500) -> list[int]:
        """Ids of the messages in `statuses` (of one account; whose last error contains a text,
        case and all), after `after_id`, in id order, at most `limit`: what a bulk command
        changes, a chunk at a time."""
        values = sorted(status.value for status in statuses)
        sql = f"SELECT id FROM message_queue WHERE status IN ({', '.join('?' * len(values))}) AND id > ?"
        params: list[Any] = [*values, after_id]
        if phone is not None:
            sql, params = sql + " AND phone = ?", [*params, phone]
        if error_contains is not None:
            sql, params = sql + f" AND {self._dialect.position('last_error')} > 0", [*params, error_contains]
        with self._guard():
            rows = self.db.execute_sql(self._dialect.sql(sql + " ORDER BY id LIMIT ?"), [*params, limit])
            return [int(row[0]) for row in rows.fetchall()]

    def _executemany(self, sql: str, params: Sequence[tuple[Any, ...]]) -> None:
        if params:
            with self._guard():
                self.db.cursor().executemany(sql, params)

    def _select_for_update(self, ids: Sequence[int]) -> list[Message]:
        return [_message(row, self.keys) for row in self._select_rows(ids)]

    def _select_rows(self, ids: Sequence[int]) -> list[tuple[Any, ...]]:
        """Rows of `_MESSAGE_COLUMNS` by id, locked on PostgreSQL."""
        found: list[tuple[Any, ...]] = []
        for chunk, marks in chunks(ids):
            sql = f"SELECT {_MESSAGE_COLUMNS} FROM message_queue WHERE id IN ({marks})"
            found.extend(self._rows(sql, chunk, self._dialect.lock_rows()))
        return found

    def _attempts_in_flight(self, ids: Sequence[int]) -> dict[int, tuple[int, int, int]]:
        """{id: (attempt, claims, claimed at in micros)} of the rows of `ids` still PROCESSING,
        locked on PostgreSQL (a row in flight was last updated by its claim)."""
        held: dict[int, tuple[int, int, int]] = {}
        for chunk, marks in chunks(ids):
            sql = self._dialect.sql(
                f"SELECT id, attempts, claims, COALESCE(claimed_at, updated_at) FROM message_queue"
                f" WHERE id IN ({marks}) AND status = ?") + self._dialect.lock_rows()
            with self._guard():
                rows = self.db.execute_sql(sql, [*chunk, Status.PROCESSING.value]).fetchall()
            held.update((row[0], (row[1], row[2], row[3])) for row in rows)
        return held

    def _rows(self, sql: str, params: Sequence[Any], suffix: str = "") -> list[tuple[Any, ...]]:
        """Run a select (`?` marks) and return its rows, as the driver gives them (tuples)."""
        with self._guard():
            return self.db.execute_sql(self._dialect.sql(sql) + suffix, params).fetchall()  # type: ignore[no-any-return]

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[Message]:
        """The messages a select of `_MESSAGE_COLUMNS` (`?` marks) returns."""
        keys = self.keys
        return [_message(row, keys) for row in self._rows(sql, params)]

    def _one_for_update(self, message_id: int) -> Message:
        found = self._select_for_update([message_id])
        if not found:
            raise MessageNotFound(f"no message with id {message_id}")
        return found[0]

    # -- reads (any thread) ----------------------------------------------------------

    def get(self, message_id: int) -> Message:
        """One message by id."""
        found = self._fetch(f"SELECT {_MESSAGE_COLUMNS} FROM message_queue WHERE id = ?", (message_id,))
        if not found:
            raise MessageNotFound(f"no message with id {message_id}")
        return replace(found[0], history=tuple(self.history(message_id)))

    def history(self, message_id: int) -> list[Attempt]:
        """A message's last attempts (at most `ATTEMPTS_KEPT`), oldest first."""
        with self._guard():
            rows = self.db.execute_sql(self._dialect.sql(
                "SELECT number, attempt, started_at, ended_at, outcome, error FROM message_attempts"
                " WHERE message_id = ? ORDER BY number"), (message_id,)).fetchall()
            if not rows:  # sent at its first claim, perhaps: its row tells that attempt
                rows = self.db.execute_sql(self._dialect.sql(
                    "SELECT claims, attempts, claimed_at, completed_at, status, last_error"
                    " FROM message_queue WHERE id = ? AND claims = 1 AND status = ?"
                    " AND claimed_at IS NOT NULL"), (message_id, Status.COMPLETED.value)).fetchall()
        return [Attempt(number, attempt, from_micros(started), from_micros(ended), Outcome(outcome), error)
                for number, attempt, started, ended, outcome, error in rows]

    def list_messages(self, phone: str, status: Status | None = None, limit: int = 100,
                      after_id: int = 0) -> list[Message]:
        """An account's messages in enqueue order, optionally of one status (the seed's `get by phone`)."""
        # Every status spelled out: (status, phone) is the one index over all of an account's rows.
        statuses = [status.value] if status is not None else [s.value for s in Status]
        marks = ", ".join("?" * len(statuses))
        return self._fetch(f"SELECT {_MESSAGE_COLUMNS} FROM message_queue WHERE status IN ({marks})"
                           " AND phone = ? AND id > ? ORDER BY id LIMIT ?",
                           (*statuses, phone, after_id, limit))

    def due_window(self, phone: str, now: datetime, limit: int) -> list[Message]:
        """Up to `limit` of an account's open messages due by `now`, in send order."""
        sql = (f"SELECT {_MESSAGE_COLUMNS} FROM message_queue WHERE phone = ? AND {OPEN_ROWS}"
               " AND available_at <= ? ORDER BY priority, id LIMIT ?")
        return self._fetch(sql, (phone, to_micros(now), limit))

    def account_view(self, phone: str, now: datetime, limit: int) -> AccountView:
        """An account's pause, first `limit` due messages and next due instant, in one read.

        One call per account start or page: at boot thousands of accounts load at once,
        and three round trips each through the reader pool were most of the boot time.
        """
        pause = self.pause(phone, now)
        due = self.due_window(phone, now, limit)
        with self._guard():
            (next_due,) = self.db.execute_sql(self._dialect.sql(
                f"SELECT MIN(available_at) FROM message_queue WHERE phone = ? AND {OPEN_ROWS}"
                " AND available_at > ?"), (phone, to_micros(now))).fetchone()
        return AccountView(pause=pause, due=due, next_due_at=_from_micros(next_due))

    def open_work(self) -> list[tuple[str, datetime]]:
        """Every account with a pending or retrying message, and when its first one is due."""
        sql = f"SELECT phone, MIN(available_at) FROM message_queue WHERE {OPEN_ROWS} GROUP BY phone"
        with self._guard():
            rows = self.db.execute_sql(sql).fetchall()
        return [(phone, from_micros(first)) for phone, first in rows]

    def count_open(self) -> int:
        """Messages not finished yet: pending, retrying or processing."""
        statuses = [*_OPEN, Status.PROCESSING.value]
        with self._guard():
            return int(self.Row.select().where(self.Row.status.in_(statuses)).count())

    def stats(self) -> QueueStats:
        """Counts by status, overall and per account."""
        query = (self.Row.select(self.Row.phone, self.Row.status, peewee.fn.COUNT(self.Row.id))
                 .group_by(self.Row.phone, self.Row.status))
        by_status = dict.fromkeys(Status, 0)
        by_account: dict[str, dict[Status, int]] = {}
        with self._guard():
            for phone, status, count in cast(Iterable[tuple[str, str, int]], query.tuples()):
                by_status[_status(status)] += count
                by_account.setdefault(phone, {})[_status(status)] = count
        return QueueStats(by_status=by_status, by_account=by_account)

    # -- operator's reads (the read commands; any thread, nothing written) --------------

    def has_account(self, phone: str) -> bool:
        """Whether any message or pause of the database has this account."""
        # Every status spelled out: (status, phone) is the one index over all of an account's rows.
        marks = ", ".join("?" * len(Status))
        with self._guard():
            (found,) = self.db.execute_sql(self._dialect.sql(
                f"SELECT EXISTS (SELECT 1 FROM message_queue WHERE status IN ({marks}) AND phone = ?)"
                " OR EXISTS (SELECT 1 FROM account_state WHERE phone = ?)"),
                (*(s.value for s in Status), phone, phone)).fetchone()
        return bool(found)

    def accounts(self) -> list[str]:
        """Every account of the database (of a message or a pause), sorted."""
        with self._guard():
            rows = self.db.execute_sql("SELECT phone FROM message_queue GROUP BY phone"
                                       " UNION SELECT phone FROM account_state").fetchall()
        return sorted(str(phone) for (phone,) in rows)

    def open_by_account(self, now: datetime) -> list[OpenWork]:
        """Per account with open messages: how many are due at `now`, how many later, and
        since when the longest-waiting due one has been due; by phone."""
        at = to_micros(now)
        with self._guard():
            rows = self.db.execute_sql(self._dialect.sql(
                "SELECT phone, SUM(CASE WHEN available_at <= ? THEN 1 ELSE 0 END), COUNT(*),"
                f" MIN(CASE WHEN available_at <= ? THEN available_at END) FROM message_queue"
                f" WHERE {OPEN_ROWS} GROUP BY phone ORDER BY phone"), (at, at)).fetchall()
        return [OpenWork(phone, int(due), int(count) - int(due), _from_micros(oldest))
                for phone, due, count, oldest in rows]

    def in_flight_before(self, before: datetime) -> tuple[int, datetime | None]:
        """Messages in `processing` claimed before `before` (their send has lasted since), and
        the earliest claim among them."""
        with self._guard():
            count, oldest = self.db.execute_sql(self._dialect.sql(
                "SELECT COUNT(*), MIN(updated_at) FROM message_queue WHERE status = ? AND updated_at < ?"),
                (Status.PROCESSING.value, to_micros(before))).fetchone()
        return int(count), _from_micros(oldest)

    def owner_state(self) -> OwnerState:
        """The owner row, and whether a supervisor holds the owner lock now: on PostgreSQL as
        pg_locks tells, on SQLite as /proc/locks tells (no lock is taken to find out)."""
        with self._guard():
            row = self.db.execute_sql(self._dialect.sql(
                "SELECT holder, epoch, taken_at FROM postroom_owner WHERE scope = ?"),
                (WHOLE_DATABASE,)).fetchone()
        held, by = self._lock_state()
        nodes = self._nodes()
        if row is None:
            return OwnerState(None, None, None, held, by, nodes)
        return OwnerState(str(row[0]), int(row[1]), from_micros(row[2]), held, by, nodes)

    def _lock_state(self) -> tuple[bool | None, str | None]:
        """(held, by whom) of the owner lock; held None when it cannot be told."""
        if not self._dialect.is_sqlite:
            with self._guard():
                row = self.db.execute_sql(LOCK_HOLDER_QUERY, (OWNER_LOCK_KEY,)).fetchone()
            if row is None:
                return False, None
            return True, f"server process pid {row[0]}" + (f" ({row[1]})" if row[1] else "")
        path = self._sqlite_file()
        identity = None if path is None else file_identity(path)
        pid = None if identity is None else flock_holder(identity)
        return (None, None) if pid is None else (pid != 0, f"pid {pid}" if pid else None)

    def _sqlite_file(self) -> Path | None:
        return sqlite_file(cast(peewee.SqliteDatabase, self.db))

    def writable(self) -> str | None:
        """Why this database would refuse a write, found without writing; None if it would
        not. SQLite: the file, its -wal and -shm, and their directory, writable by this user.
        PostgreSQL: not a standby, writes not read-only by default, INSERT and UPDATE granted
        on the queue (ask it on a connection opened without `read_only`)."""
        if self._dialect.is_sqlite:
            return _sqlite_unwritable(self._sqlite_file())
        with self._guard():
            standby, read_only, granted = self.db.execute_sql(
                "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'),"
                " has_table_privilege(to_regclass('message_queue')::oid, 'INSERT, UPDATE')").fetchone()
        if standby:
            return "the server is a standby in recovery: it refuses every write"
        if read_only == "on":
            return "default_transaction_read_only is on for this user and database"
        return "this user may not insert or update message_queue" if granted is False else None

    def find_messages(self, query: MessageFilter) -> list[Message]:
        """The messages `query` selects, by id (oldest or newest first), at most `query.limit`.
        An account's rows are found through the (status, phone) index, a page through the
        primary key."""
        where, params = self._filter_sql(query)
        order = "DESC" if query.newest_first else "ASC"
        return self._fetch(f"SELECT {_MESSAGE_COLUMNS} FROM message_queue WHERE {where}"
                           f" ORDER BY id {order} LIMIT ?", (*params, query.limit))

    def _filter_sql(self, query: MessageFilter) -> tuple[str, list[Any]]:
        """The WHERE clause (`?` marks) of `find_messages` and its parameters."""
        parts: list[str] = []
        params: list[Any] = []

        def where(sql: str, *values: Any) -> None:
            parts.append(sql)
            params.extend(values)

        # Every status spelled out for an account: (status, phone) is its index.
        statuses = query.statuses or (tuple(Status) if query.phone is not None else ())
        if statuses:
            where(f"status IN ({', '.join('?' * len(statuses))})", *(s.value for s in statuses))
        if query.phone is not None:
            where("phone = ?", query.phone)
        if query.priorities:
            where(f"priority IN ({', '.join('?' * len(query.priorities))})", *map(int, query.priorities))
        if query.created_from is not None:
            where("created_at >= ?", to_micros(query.created_from))
        if query.created_before is not None:
            where("created_at < ?", to_micros(query.created_before))
        if query.error_contains is not None:
            like = self._dialect.like_any_case()
            where(f"last_error {like} ? ESCAPE '!'", _like_pattern(query.error_contains))
        if query.after_id is not None:
            where("id < ?" if query.newest_first else "id > ?", query.after_id)
        return " AND ".join(parts) or "1 = 1", params


# Enums by value for `_message`: a dict lookup, where calling the Enum costs every row far more.
_PRIORITIES = {int(priority): priority for priority in Priority}
_STATUSES = {status.value: status for status in Status}


def _status(value: str) -> Status:
    """A row's status; one this version does not know is a `StorageError` that names it."""
    status = _STATUSES.get(value)
    if status is None:
        raise StorageError(f"the database holds a message status postroom does not know: {value!r} "
                           "(written by a newer version of postroom, or by hand)")
    return status


# A row's instants repeat (a new row was created, made available and updated at its enqueue
# instant; a claim's rows were all updated at once): each is converted once, then looked up.
_instant = functools.lru_cache(maxsize=1024)(from_micros)


def _message(row: Sequence[Any], keys: Keyring | None) -> Message:
    """The one reader of a message: a row of `_MESSAGE_COLUMNS` (and perhaps more columns
    after them), in the database's own encoding (UTC microseconds, UTF-8 bytes, encrypted or
    not), which is storage's to decode."""
    (message_id, phone, user_id, text, attachment, priority, status, created_at, scheduled_at,
     available_at, attempts, max_attempts, updated_at, idempotency_key, last_error,
     completed_at) = row[:16]
    return Message(
        id=message_id, phone=phone, user_id=user_id,
        text=decode_text(text, keys), attachment=decode_attachment(attachment, keys),
        priority=_PRIORITIES[priority], status=_status(status),
        created_at=_instant(created_at), scheduled_at=_from_micros(scheduled_at),
        available_at=_instant(available_at), attempts=attempts,
        max_attempts=max_attempts, last_error=last_error,
        completed_at=_from_micros(completed_at), updated_at=_instant(updated_at),
        idempotency_key=idempotency_key,
    )


def _refuse_conflict(news: Sequence[NewMessage], plan: Sequence[object]) -> None:
    """Raise for the first conflict of a batch's plan, by its position in the batch."""
    position = next((i for i, step in enumerate(plan) if isinstance(step, IdempotencyConflict)), None)
    if position is not None:
        noun = "recipient" if isinstance(news, NewBroadcast) else "message"
        raise IdempotencyConflict(f"{noun} {position}: its idempotency key was already used for a "
                                  "different message; nothing of the batch was written")


_CLOSED = "the database was closed (its supervisor stopped, or its producer was closed)"


def _close_connections(connections: list[Any]) -> None:
    """Close each, whatever state it is in (its thread may be gone, its server too)."""
    for connection in connections:
        with contextlib.suppress(*_DRIVER_ERRORS, AttributeError):
            connection.close()


def _is_closed(connection: Any) -> bool:
    """Whether a driver connection is closed (sqlite3 has no attribute for it: a probe)."""
    closed = getattr(connection, "closed", None)
    if closed is not None:
        return bool(closed)
    try:
        connection.total_changes  # noqa: B018 - raises once the sqlite3 connection is closed
    except sqlite3.ProgrammingError:
        return True
    return False


_OUTCOMES = {Status.COMPLETED: Outcome.COMPLETED, Status.FAILED: Outcome.FAILED}


def _outcome_of(t: Transition, claims: int) -> Outcome | None:
    """How a recorded attempt ended, for its row of history; None for a claim called off
    before its send began (given back with no error: the sender never saw it), and for a
    message sent at its first claim, whose one attempt its own row tells (`history`): most
    messages, spared a write each."""
    if t.give_back:
        return Outcome.PAUSED if t.error is not None else None
    if t.status is Status.COMPLETED and claims == 1:
        return None
    return _OUTCOMES.get(t.status, Outcome.RETRYING)


def _attempt_row(message_id: int, claims: int, claimed_at: int, attempt: int, ended_at: int,
                 outcome: Outcome, error: str | None) -> tuple[Any, ...]:
    """A row of `_ATTEMPT_COLUMNS`: the attempt of the message's claim number `claims`."""
    return (message_id, claims % ATTEMPTS_KEPT, claims, attempt, claimed_at, ended_at, outcome.value, error)


#: Errors one request can cause (a constraint, a value): the requests written with it may commit without it.
_REQUEST_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(module, name) for module in (peewee, sqlite3, *_DRIVER_MODULES)
    for name in ("IntegrityError", "DataError", "ProgrammingError", "NotSupportedError")
    if hasattr(module, name))


def caused_by_the_request(error: StorageError) -> bool:
    """Whether a write failed for something in it, not because the database failed (locked,
    unreachable, too slow, full, lost): written again alone, the others may commit, where
    after a database failure each would fail, and wait, the same."""
    return isinstance(error.__cause__, _REQUEST_ERRORS)


def _is_broken(connection: Any) -> bool:
    """Whether a driver connection was lost (psycopg 3 says `broken`; psycopg2 closes it)."""
    return bool(getattr(connection, "broken", False)) or _is_closed(connection)


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _like_pattern(text: str) -> str:
    """A LIKE pattern (escape character `!`) matching `text` anywhere, its own % and _ literal."""
    escaped = text.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%"


def _sqlite_unwritable(path: Path | None) -> str | None:
    """Why this user could not write the SQLite file at `path` (checked with `os.access`,
    writing nothing); None if it could."""
    if path is None:
        return None  # in memory
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    checks = [(path, os.W_OK, "the database file"),
              (path.parent, os.W_OK | os.X_OK, "its directory (SQLite writes its -wal and -shm there)"),
              *((extra, os.W_OK, "its WAL file") for extra in (wal, shm) if extra.exists())]
    for target, mode, what in checks:
        if not os.access(target, mode):
            return f"{what} {target} is not writable by this user"
    return None


def _pause_from_row(row: Sequence[Any]) -> AccountPause:
    """An AccountPause from a row in `_PAUSES_IN_FORCE` order."""
    return AccountPause(row[0], _from_micros(row[1]), row[2] or "")


def _from_micros(value: int | None) -> datetime | None:
    return from_micros(value) if value is not None else None


def _micros(value: datetime | None) -> int | None:
    return to_micros(value) if value is not None else None


def _shared_values(new: NewMessage, keys: Keyring | None,
                   micros: Callable[[datetime | None], int | None] = _micros) -> tuple[Any, ...]:
    """A new row's values from text to updated_at, in `_INSERT_COLUMNS` order: what the
    messages of a broadcast have in common (one text encrypted once)."""
    return (encode_text(new.text, keys), encode_attachment(new.attachment, keys), int(new.priority),
            Status.PENDING.value,
            micros(new.created_at), micros(new.scheduled_at), micros(new.scheduled_at or new.created_at),
            0, new.max_attempts, micros(new.created_at))



def _settle_interrupted(message: Message, delivery: Delivery, now: datetime, crashes: int) -> Message:
    """The row as settled: retried now, or failed (at-most-once, its last attempt, or a poison
    message: in flight at `POISON_AFTER` crashes in a row, so that it cannot kill node after
    node whatever its `max_attempts`)."""
    if crashes >= POISON_AFTER:
        return replace(message, status=Status.FAILED, last_error=POISON, completed_at=now, updated_at=now)
    error = INTERRUPTED
    if delivery is Delivery.AT_MOST_ONCE or message.attempts >= message.max_attempts:
        return replace(message, status=Status.FAILED, last_error=error, completed_at=now,
                       updated_at=now)
    return replace(message, status=Status.RETRYING, last_error=error, available_at=now,
                   updated_at=now)
