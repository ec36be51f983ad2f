"""Storage's operator's reads (the read commands' queries), on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from postroom_common import MessageFilter, NewMessage, OpenWork, Priority, Status, Transition
from storage import Storage, open_database

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _new(phone: str, *, at: datetime = NOW, scheduled: datetime | None = None,
         priority: Priority = Priority.NORMAL) -> NewMessage:
    return NewMessage(phone=phone, user_id="u", text="hi", attachment=None, priority=priority,
                      created_at=at, scheduled_at=scheduled, max_attempts=3, idempotency_key=None)


def _insert(store: Storage, *news: NewMessage) -> list[int]:
    with store.write_transaction():
        return [int(i) for i in store.insert(list(news))]  # type: ignore[arg-type]


def test_open_work_is_split_at_the_instant(storage: Storage) -> None:
    """Per account, open messages due at the instant apart from those due later, with the
    earliest due instant; finished and in-flight messages are not open work."""
    _insert(storage, _new("+1a", at=NOW - timedelta(minutes=5)), _new("+1a"),
            _new("+1a", scheduled=NOW + timedelta(hours=1)), _new("+1b", scheduled=NOW + timedelta(hours=2)))
    (claimed,) = _insert(storage, _new("+1c"))
    with storage.write_transaction():
        storage.claim([claimed], NOW)
    assert storage.open_by_account(NOW) == [
        OpenWork("+1a", 2, 1, NOW - timedelta(minutes=5)), OpenWork("+1b", 0, 1, None)]


def test_in_flight_before_counts_sends_claimed_earlier(storage: Storage) -> None:
    """Messages in processing claimed before the instant are counted, with the earliest claim."""
    first, second, _ = _insert(storage, _new("+1a", at=NOW - timedelta(hours=1)), _new("+1b"), _new("+1c"))
    with storage.write_transaction():
        storage.claim([first], NOW - timedelta(minutes=10))
        storage.claim([second], NOW)
    assert storage.in_flight_before(NOW - timedelta(minutes=1)) == (1, NOW - timedelta(minutes=10))
    assert storage.in_flight_before(NOW - timedelta(hours=1)) == (0, None)


def test_find_messages_combines_its_filters(storage: Storage) -> None:
    """Each filter narrows the page: account, status, priority, creation time, error text
    (any case; LIKE's own characters taken literally)."""
    ids = _insert(storage, _new("+1a", priority=Priority.HIGH), _new("+1a", at=NOW + timedelta(hours=1)),
                  _new("+1b"), _new("+1b"))
    for message_id, error in ((ids[2], "Boom: 100% of_it"), (ids[3], "Boom: 100 percent")):
        with storage.write_transaction():  # one at a time: an account has one message in flight
            storage.claim([message_id], NOW)
            storage.record([Transition(message_id, 1, Status.FAILED, NOW, error=error)])

    def found(**fields: Any) -> list[int]:
        return [m.id for m in storage.find_messages(MessageFilter(**fields))]

    assert found(phone="+1a") == ids[:2]
    assert found(statuses=(Status.FAILED,), newest_first=True) == [ids[3], ids[2]]
    assert found(priorities=(Priority.HIGH,)) == [ids[0]]
    assert found(created_from=NOW + timedelta(minutes=1)) == [ids[1]]
    assert found(created_before=NOW + timedelta(minutes=1), phone="+1a") == [ids[0]]
    assert found(error_contains="boom") == ids[2:]
    assert found(error_contains="100%") == [ids[2]]
    assert found(error_contains="f_i") == [ids[2]] and found(error_contains="0 p") == [ids[3]]
    assert found(after_id=ids[1], limit=1) == [ids[2]]
    assert found(after_id=ids[2], newest_first=True) == ids[:2][::-1]


def test_accounts_and_has_account_know_paused_accounts_too(storage: Storage) -> None:
    """An account of a message or of a pause alone is known; any other is not."""
    from postroom_common import AccountPause

    _insert(storage, _new("+1b"), _new("+1a"), _new("+1a"))
    with storage.write_transaction():
        storage.set_pause(AccountPause("+1z", None, "AccountSuspended"), NOW)
    assert storage.accounts() == ["+1a", "+1b", "+1z"]
    assert [storage.has_account(p) for p in ("+1a", "+1z", "+1q")] == [True, True, False]


def test_no_owner_ever_is_told_apart(storage: Storage) -> None:
    """A database no supervisor ever owned: no holder, and the lock not held."""
    owner = storage.owner_state()
    assert (owner.holder, owner.epoch, owner.lock_held) == (None, None, False)


@pytest.mark.postgres
def test_a_postgres_session_that_refuses_writes_is_named(postgres_url: str) -> None:
    """writable() names a session whose writes are read-only by default; None on a normal one."""
    normal = Storage(open_database(postgres_url))
    reader = Storage(open_database(postgres_url, read_only=True))
    normal.create_schema()
    try:
        assert normal.writable() is None
        assert "default_transaction_read_only" in (reader.writable() or "")
    finally:
        normal.close()
        reader.close()


# -- indexes --------------------------------------------------------------------------------


def _plans(store: Storage, read: Callable[[], object]) -> list[str]:
    """SQLite's query plan of every statement `read` runs."""
    statements: list[str] = []
    connection = store.db.connection()
    connection.set_trace_callback(statements.append)
    try:
        read()
    finally:
        connection.set_trace_callback(None)
    explain = sqlite3.connect(f"file:{store.db.database.split('file:', 1)[-1]}", uri=True)
    try:
        return [" / ".join(row[3] for row in explain.execute(f"EXPLAIN QUERY PLAN {sql}"))
                for sql in statements if sql.lstrip().upper().startswith("SELECT")]
    finally:
        explain.close()


@pytest.mark.parametrize("read", [
    lambda s: s.has_account("+1a"),  # the (status, phone) index, per status
    lambda s: s.find_messages(MessageFilter(phone="+1a")),  # the same
    lambda s: s.in_flight_before(NOW),  # the status index
    lambda s: s.open_by_account(NOW),  # the partial index of open rows
], ids=["has_account", "find_by_account", "in_flight_before", "open_by_account"])
def test_the_reads_go_through_an_index(sqlite_url: str, read: Callable[[Storage], object]) -> None:
    """On SQLite these reads never scan the whole queue table: each goes through an index."""
    store = Storage(open_database(sqlite_url))
    store.create_schema()
    _insert(store, *[_new(f"+1{n % 7}") for n in range(50)])
    store.db.execute_sql("ANALYZE")
    plans = _plans(store, lambda: read(store))
    store.close()
    queue_steps = [step for plan in plans for step in plan.split(" / ") if "message_queue" in step]
    assert queue_steps and all("INDEX" in step for step in queue_steps), plans
