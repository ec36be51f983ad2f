"""The storage contract, run on a real SQLite file and on PostgreSQL when reachable."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from peewee import SqliteDatabase

from postroom_common import (
    Delivery,
    IdempotencyConflict,
    InvalidTransition,
    MessageNotFound,
    NewBroadcast,
    NewMessage,
    PostroomError,
    Priority,
    Status,
    Transition,
)
from storage import OwnerLock, Storage, open_database
from storage.models import DEMO_KEY_PREFIX, to_micros
from storage.store import INTERRUPTED

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def new(phone: str = "+1555", priority: Priority = Priority.NORMAL, text: str = "hi",
        scheduled_at: datetime | None = None, key: str | None = None,
        max_attempts: int = 3) -> NewMessage:
    return NewMessage(phone=phone, user_id="u1", text=text, attachment=None, priority=priority,
                      created_at=NOW, scheduled_at=scheduled_at, max_attempts=max_attempts,
                      idempotency_key=key)


def insert(storage: Storage, *news: NewMessage) -> list[int]:
    with storage.write_transaction():
        ids = storage.insert(list(news))
    assert all(type(i) is int for i in ids), ids  # fresh rows answer their ids
    return ids  # type: ignore[return-value]


def test_insert_assigns_increasing_ids_and_round_trips(storage: Storage) -> None:
    """Inserted rows come back identical, with ids in enqueue order."""
    text = "héllo 👋 שלום \x00 '; DROP TABLE message_queue; --" + "x" * 4000
    ids = insert(storage, new(text=text), new(priority=Priority.HIGH))
    assert ids == sorted(ids) and len(set(ids)) == 2
    got = storage.get(ids[0])
    assert got.text == text and got.status is Status.PENDING and got.attempts == 0
    assert got.created_at == NOW and got.created_at.tzinfo is not None


def test_due_window_orders_by_priority_then_id(storage: Storage) -> None:
    """The window holds due open messages only, HIGH first, FIFO within a priority."""
    ids = insert(storage, new(priority=Priority.LOW), new(), new(priority=Priority.HIGH), new(),
                 new(scheduled_at=NOW + timedelta(hours=1)), new(phone="+other"))
    window = storage.due_window("+1555", NOW, limit=10)
    assert [m.id for m in window] == [ids[2], ids[1], ids[3], ids[0]]
    assert [m.id for m in storage.due_window("+1555", NOW, limit=2)] == [ids[2], ids[1]]


def test_account_view_loads_pause_window_and_next_due(storage: Storage) -> None:
    """One read gives an account's start: its pause, its first due messages, its next due instant."""
    from postroom_common import AccountPause

    ids = insert(storage, new(priority=Priority.LOW), new(), new(scheduled_at=NOW + timedelta(hours=1)),
                 new(scheduled_at=NOW + timedelta(hours=2)), new(phone="+other"))
    view = storage.account_view("+1555", NOW, limit=1)
    assert view.pause is None and [m.id for m in view.due] == [ids[1]]
    assert view.next_due_at == NOW + timedelta(hours=1)
    with storage.write_transaction():
        storage.set_pause(AccountPause("+1555", NOW + timedelta(minutes=5), "RateLimited"), NOW)
    view = storage.account_view("+1555", NOW, limit=10)
    assert view.pause == AccountPause("+1555", NOW + timedelta(minutes=5), "RateLimited")
    assert [m.id for m in view.due] == [ids[1], ids[0]]
    assert storage.account_view("+1555", NOW + timedelta(minutes=5), limit=10).pause is None
    empty = storage.account_view("+nobody", NOW, limit=10)
    assert empty.pause is None and empty.due == [] and empty.next_due_at is None


def test_claim_then_record_completed(storage: Storage) -> None:
    """A claim counts the attempt; recording its outcome with the same attempt applies."""
    (mid,) = insert(storage, new())
    with storage.write_transaction():
        claimed = storage.claim([mid], NOW)
    assert claimed[mid].status is Status.PROCESSING and claimed[mid].attempts == 1
    with storage.write_transaction():
        again = storage.claim([mid], NOW)
        written = storage.record([Transition(mid, 1, Status.COMPLETED, NOW)])
    assert again == {}
    assert written == {mid} and storage.get(mid).status is Status.COMPLETED
    assert storage.get(mid).completed_at == NOW


def test_stale_outcome_is_ignored(storage: Storage) -> None:
    """An outcome for an older attempt (a late return after a timeout) changes nothing."""
    (mid,) = insert(storage, new())
    with storage.write_transaction():
        storage.claim([mid], NOW)
        storage.record([Transition(mid, 1, Status.RETRYING, NOW, "TimeoutError", NOW)])
        storage.claim([mid], NOW)
        late = storage.record([Transition(mid, 1, Status.COMPLETED, NOW)])
    assert late == set()
    assert storage.get(mid).status is Status.PROCESSING and storage.get(mid).attempts == 2


def test_give_back_does_not_count_the_attempt(storage: Storage) -> None:
    """A rate-limited attempt is given back: attempts returns to what it was."""
    (mid,) = insert(storage, new())
    later = NOW + timedelta(seconds=30)
    with storage.write_transaction():
        storage.claim([mid], NOW)
        storage.record([Transition(mid, 1, Status.PENDING, NOW, "RateLimited", later,
                                   give_back=True)])
    got = storage.get(mid)
    assert (got.status, got.attempts, got.available_at) == (Status.PENDING, 0, later)


def test_cancel_and_requeue(storage: Storage) -> None:
    """Only open messages can be cancelled, only failed ones requeued."""
    a, b = insert(storage, new(), new())
    with storage.write_transaction():
        assert storage.cancel(a, NOW).status is Status.CANCELLED
    with pytest.raises(InvalidTransition), storage.write_transaction():
        storage.cancel(a, NOW)
    with pytest.raises(InvalidTransition), storage.write_transaction():
        storage.requeue(b, NOW)
    with storage.write_transaction():
        storage.claim([b], NOW)
        storage.record([Transition(b, 1, Status.FAILED, NOW, "PermanentError")])
        requeued = storage.requeue(b, NOW)
    assert requeued.status is Status.PENDING and requeued.attempts == 0
    with pytest.raises(MessageNotFound):
        storage.get(999_999)


def test_idempotency_key(storage: Storage) -> None:
    """A repeated key answers the first row; a different payload under it is a conflict."""
    (first,) = insert(storage, new(key="k1"))
    with storage.write_transaction():
        results = storage.insert([new(key="k1"), new(key="k1", text="other"), new(key="k2"),
                                  new(key="k2")])
    assert results[0] == storage.get(first)  # the first message, as written
    assert isinstance(results[1], IdempotencyConflict)
    assert type(results[2]) is int and results[3] == results[2]  # repeated in the batch: one row
    assert storage.stats().total == 2


def test_every_query_returning_messages_reads_a_row_alike(storage: Storage) -> None:
    """get, list_messages, due_window, claim, interrupted, cancel and an idempotent replay
    build one message from one row, every column set (the single row-to-Message mapper)."""
    at, later = NOW + timedelta(minutes=1), NOW + timedelta(minutes=2)
    message = new(text="héllo \x00", scheduled_at=at, key="k")._replace(attachment="file-1")
    (mid,) = insert(storage, message)
    with storage.write_transaction():
        claimed = storage.claim([mid], at)[mid]
        storage.record([Transition(mid, 1, Status.RETRYING, later, "TimeoutError: slow", later)])
    retrying = storage.get(mid)
    assert (retrying.attachment, retrying.scheduled_at, retrying.last_error) == (
        "file-1", at, "TimeoutError: slow")
    assert retrying == replace(claimed, status=Status.RETRYING, available_at=later, updated_at=later,
                               last_error="TimeoutError: slow")
    assert storage.list_messages("+1555") == storage.due_window("+1555", later, 10) == [retrying]
    with storage.write_transaction():
        (replayed,) = storage.insert([message])
        assert replayed == retrying
        reclaimed = storage.claim([mid], later)[mid]
    assert storage.interrupted() == [reclaimed] == [storage.get(mid)]
    with storage.write_transaction():
        storage.record([Transition(mid, 2, Status.PENDING, later, None, later, give_back=True)])
        cancelled = storage.cancel(mid, later)
    assert cancelled == storage.get(mid) and cancelled.completed_at == later

@pytest.mark.parametrize("key", [None, "news"])
def test_a_broadcast_writes_the_rows_its_messages_would(storage: Storage, key: str | None) -> None:
    """A broadcast, written from its shared fields, leaves the same rows as its messages one by one."""
    template = new(priority=Priority.LOW, text="héllo", scheduled_at=NOW + timedelta(hours=1), key=key)
    broadcast = NewBroadcast(template, [("+1", "a"), ("+2", "b"), ("+1", "c")])
    assert [(n.phone, n.user_id, n.idempotency_key) for n in broadcast] == [
        ("+1", "a", None if key is None else "news:0"), ("+2", "b", None if key is None else "news:1"),
        ("+1", "c", None if key is None else "news:2")]
    assert broadcast[-1] == broadcast[2] and broadcast[1:] == [broadcast[1], broadcast[2]]
    with pytest.raises(IndexError):
        broadcast[3]
    with storage.write_transaction():
        ids = storage.insert(broadcast)
    written = [storage.get(i) for i in ids]  # type: ignore[arg-type]
    assert written == [n.as_pending(i) for i, n in zip(ids, broadcast, strict=True)]  # type: ignore[arg-type]
    if key is not None:
        with storage.write_transaction():
            assert [r.id for r in storage.insert(broadcast)] == ids  # type: ignore[union-attr]
    assert storage.stats().total == 3


def test_idempotency_keys_of_a_big_batch_are_looked_up_in_chunks(storage: Storage) -> None:
    """More keys than one IN (...) list holds: the earlier ones are all found, the new ones written."""
    earlier = insert(storage, *(new(key=f"k{i}") for i in range(700)))
    with storage.write_transaction():
        results = storage.insert([new(key=f"k{i}") for i in range(1_200)])
    assert [r.id for r in results[:700]] == earlier  # type: ignore[union-attr]
    assert all(type(r) is int for r in results[700:]) and storage.stats().total == 1_200


@pytest.mark.parametrize(
    ("delivery", "attempts_before", "expected"),
    [
        (Delivery.AT_LEAST_ONCE, 0, Status.RETRYING),  # interrupted: sent again
        (Delivery.AT_LEAST_ONCE, 2, Status.FAILED),  # the interrupted attempt was the last
        (Delivery.AT_MOST_ONCE, 0, Status.FAILED),  # never sent twice
    ],
)
def test_recover_interrupted(storage: Storage, delivery: Delivery, attempts_before: int,
                             expected: Status) -> None:
    """Rows left PROCESSING by a crash are settled by the delivery policy."""
    (mid,) = insert(storage, new(max_attempts=3))
    with storage.write_transaction():
        for attempt in range(1, attempts_before + 1):
            storage.claim([mid], NOW)
            storage.record([Transition(mid, attempt, Status.RETRYING, NOW, "x", NOW)])
        storage.claim([mid], NOW)
        settled = storage.recover_interrupted(delivery, NOW)
    assert [m.status for m in settled] == [expected]
    assert storage.get(mid).status is expected
    assert "interrupted" in (storage.get(mid).last_error or "")


def test_recovery_settles_only_rows_still_held_by_the_attempt_it_read(
        storage: Storage, database_url: str) -> None:
    """Rows another connection completed, or claimed again, after recovery read them are left
    as that connection wrote them; only a row still in the attempt recovery read is settled."""
    completed, reclaimed, interrupted = insert(storage, new("+1"), new("+2"), new("+3"))
    with storage.write_transaction():
        storage.claim([completed, reclaimed, interrupted], NOW)
    read = storage.interrupted()
    assert sorted(m.id for m in read) == [completed, reclaimed, interrupted]

    other = Storage(open_database(database_url))  # its own connection, committed in between
    try:
        with other.write_transaction():
            other.record([Transition(completed, 1, Status.COMPLETED, NOW),
                          Transition(reclaimed, 1, Status.RETRYING, NOW, "x", NOW)])
            other.claim([reclaimed], NOW)
    finally:
        other.close()

    with storage.write_transaction():
        settled = storage.settle_interrupted(read, Delivery.AT_LEAST_ONCE, NOW)
    assert [m.id for m in settled] == [interrupted]
    assert storage.get(completed).status is Status.COMPLETED
    assert (storage.get(reclaimed).status, storage.get(reclaimed).attempts) == (Status.PROCESSING, 2)
    assert storage.get(interrupted).status is Status.RETRYING


def _interrupted(storage: Storage, mid: int) -> int:
    """How many crashes in a row interrupted a row's attempts (storage's own column)."""
    return int(storage.Row.select(storage.Row.interrupted).where(storage.Row.id == mid).scalar())


def _interrupt(storage: Storage, mid: int, delivery: Delivery = Delivery.AT_LEAST_ONCE) -> None:
    """Claim a message, then settle it as the boot after a crash does."""
    with storage.write_transaction():
        storage.claim([mid], NOW)
        storage.recover_interrupted(delivery, NOW)


def test_recovery_counts_the_crashes_in_a_row(storage: Storage) -> None:
    """Each recovery that settles a row counts one more crash; a claim keeps the count, and
    the next recorded outcome sets it back to 0."""
    (mid,) = insert(storage, new(max_attempts=5))
    assert _interrupted(storage, mid) == 0
    for crashes in (1, 2):
        _interrupt(storage, mid)
        assert _interrupted(storage, mid) == crashes
    with storage.write_transaction():
        storage.claim([mid], NOW)
    assert _interrupted(storage, mid) == 2
    with storage.write_transaction():
        storage.record([Transition(mid, 3, Status.COMPLETED, NOW)])
    assert _interrupted(storage, mid) == 0


_AFTER_A_CLAIM = {  # outcomes of the claim that follows the interruption (attempt 2)
    "completed": Transition(0, 2, Status.COMPLETED, NOW),
    # No error: last_error keeps the interruption's text (COALESCE), the count must not.
    "retrying": Transition(0, 2, Status.RETRYING, NOW, None, NOW),
    "failed": Transition(0, 2, Status.FAILED, NOW, "PermanentError: no"),
    "given back": Transition(0, 2, Status.PENDING, NOW, None, NOW, give_back=True),
}


@pytest.mark.parametrize("outcome", [*_AFTER_A_CLAIM, "requeued", "cancelled"])
def test_an_outcome_after_an_interruption_ends_the_run_of_crashes(storage: Storage,
                                                                 outcome: str) -> None:
    """A recorded outcome, a requeue or a cancel sets the count back to 0: a message claimed
    again after it is in flight for the first time since a crash, no suspect."""
    (mid,) = insert(storage, new(max_attempts=5))
    _interrupt(storage, mid, Delivery.AT_MOST_ONCE if outcome == "requeued" else Delivery.AT_LEAST_ONCE)
    assert _interrupted(storage, mid) == 1
    with storage.write_transaction():
        if outcome == "requeued":
            storage.requeue(mid, NOW)
        elif outcome == "cancelled":
            storage.cancel(mid, NOW)
        else:
            storage.claim([mid], NOW)
            assert storage.record([replace(_AFTER_A_CLAIM[outcome], id=mid)]) == {mid}
    assert _interrupted(storage, mid) == 0
    with storage.write_transaction():
        storage.claim([mid], NOW)
    assert storage.interrupted_again() == []


def test_interrupted_again_names_the_rows_in_flight_at_a_second_crash(storage: Storage) -> None:
    """(id, phone) in id order of the rows in flight again after an interruption; not a row in
    flight for the first time, nor an interrupted one not claimed again."""
    twice_b, first_time, twice_a, waiting = insert(storage, new(phone="+b"), new(), new(phone="+a"),
                                                   new())
    for mid in (twice_b, twice_a, waiting):
        _interrupt(storage, mid)
    with storage.write_transaction():
        storage.claim([twice_a, twice_b, first_time], NOW)
    assert storage.interrupted_again() == [(twice_b, "+b"), (twice_a, "+a")]

def test_cleanup_removes_only_old_finished_rows(storage: Storage) -> None:
    """Finished rows older than the cutoff go; open rows and recent finished rows stay."""
    old_done, old_open, new_done = insert(storage, new(), new(), new())
    with storage.write_transaction():
        storage.claim([old_done], NOW)
        storage.record([Transition(old_done, 1, Status.COMPLETED, NOW)])
        storage.claim([new_done], NOW)
        storage.record([Transition(new_done, 1, Status.COMPLETED, NOW + timedelta(days=8))])
        deleted = storage.delete_finished_before(NOW + timedelta(days=1), limit=100)
    assert deleted == 1
    remaining = {m.id for m in storage.list_messages("+1555")}
    assert remaining == {old_open, new_done}


def test_an_id_is_never_given_twice_even_after_the_newest_rows_are_deleted(
        storage: Storage, database_url: str) -> None:
    """Ids go on from the highest ever written, across a restart (a new Storage), even once
    cleanup removed the newest rows: an old id never names a new message."""
    first = insert(storage, new(), new(), new())
    for message_id in first:  # one at a time: an account has one message in flight at most
        with storage.write_transaction():
            storage.claim([message_id], NOW)
            storage.record([Transition(message_id, 1, Status.COMPLETED, NOW)])
    with storage.write_transaction():
        assert storage.delete_finished_before(NOW + timedelta(days=1), limit=100) == 3
    assert storage.list_messages("+1555") == []
    restarted = Storage(open_database(database_url))
    try:
        restarted.create_schema()
        (later,) = insert(restarted, new())
    finally:
        restarted.close()
    assert later > max(first)


def test_open_work_and_stats(storage: Storage) -> None:
    """The boot's reads (the accounts with work, then each one's due window) and counts by
    status and account."""
    ids = insert(storage, new(phone="+a", priority=Priority.LOW), new(phone="+a"), new(phone="+b"))
    with storage.write_transaction():
        storage.claim([ids[2]], NOW)
        storage.record([Transition(ids[2], 1, Status.COMPLETED, NOW)])
    assert storage.open_work() == [("+a", NOW)]
    assert [m.id for m in storage.due_window("+a", NOW, limit=10)] == [ids[1], ids[0]]
    stats = storage.stats()
    assert stats.by_status[Status.PENDING] == 2 and stats.by_status[Status.COMPLETED] == 1
    assert stats.by_account["+b"] == {Status.COMPLETED: 1}


def test_list_messages_filters_and_pages(storage: Storage) -> None:
    """An account's messages by status, paged by id."""
    ids = insert(storage, *[new() for _ in range(5)])
    assert [m.id for m in storage.list_messages("+1555", limit=2)] == ids[:2]
    assert [m.id for m in storage.list_messages("+1555", after_id=ids[2])] == ids[3:]
    assert storage.list_messages("+1555", status=Status.FAILED) == []


def test_schema_creation_is_idempotent(storage: Storage) -> None:
    """Creating the schema on an existing database keeps the rows and the id sequence."""
    (first,) = insert(storage, new())
    storage.create_schema()
    (second,) = insert(storage, new())
    assert second > first and storage.stats().total == 2


def _index_names(storage: Storage) -> set[str]:
    return {index.name for index in storage.db.get_indexes("message_queue")}


def test_schema_retires_the_indexes_of_earlier_versions(storage: Storage) -> None:
    """A database made by an earlier version loses the indexes `open_by_account` replaced
    (each cost every insert a page write) and gains it; its rows are untouched."""
    from storage.models import RETIRED_INDEXES

    storage.db.execute_sql("DELETE FROM postroom_meta")  # as unversioned as the earlier versions
    storage.db.execute_sql("DROP INDEX message_queue_open_by_account")
    storage.db.execute_sql("CREATE INDEX messagerow_phone_status ON message_queue (phone, status)")
    storage.db.execute_sql("CREATE INDEX messagerow_phone_priority_id ON message_queue (phone, priority, id)")
    ids = insert(storage, new(), new(priority=Priority.HIGH))
    assert set(RETIRED_INDEXES) <= _index_names(storage)

    storage.create_schema()

    names = _index_names(storage)
    assert not set(RETIRED_INDEXES) & names and "message_queue_open_by_account" in names
    assert [m.id for m in storage.due_window("+1555", NOW, limit=10)] == [ids[1], ids[0]]


#: `message_queue` as the previous version created it (no `interrupted` column), per backend.
_PREVIOUS_TABLE = {
    "sqlite": 'CREATE TABLE "message_queue" ("id" INTEGER NOT NULL PRIMARY KEY,'
              ' "phone" VARCHAR(64) NOT NULL, "user_id" VARCHAR(255) NOT NULL, "text" BLOB NOT NULL,'
              ' "attachment" TEXT, "priority" INTEGER NOT NULL, "status" VARCHAR(16) NOT NULL,'
              ' "created_at" INTEGER NOT NULL, "scheduled_at" INTEGER, "available_at" INTEGER NOT NULL,'
              ' "attempts" INTEGER NOT NULL, "max_attempts" INTEGER NOT NULL, "last_error" TEXT,'
              ' "completed_at" INTEGER, "updated_at" INTEGER NOT NULL, "idempotency_key" VARCHAR(255))',
    "postgres": 'CREATE TABLE "message_queue" ("id" BIGINT NOT NULL PRIMARY KEY,'
                ' "phone" VARCHAR(64) NOT NULL, "user_id" VARCHAR(255) NOT NULL, "text" BYTEA NOT NULL,'
                ' "attachment" TEXT, "priority" SMALLINT NOT NULL, "status" VARCHAR(16) NOT NULL,'
                ' "created_at" BIGINT NOT NULL, "scheduled_at" BIGINT, "available_at" BIGINT NOT NULL,'
                ' "attempts" INTEGER NOT NULL, "max_attempts" INTEGER NOT NULL, "last_error" TEXT,'
                ' "completed_at" BIGINT, "updated_at" BIGINT NOT NULL, "idempotency_key" VARCHAR(255))',
}


def _previous_database(url: str, rows: list[tuple[int, Status, str | None]]) -> Storage:
    """A database as the previous version left it: its table, rows of (id, status, last_error)."""
    db = open_database(url)
    db.execute_sql(_PREVIOUS_TABLE["sqlite" if isinstance(db, SqliteDatabase) else "postgres"])
    at = to_micros(NOW)
    sql = ("INSERT INTO message_queue (id, phone, user_id, text, priority, status, created_at,"
           " available_at, attempts, max_attempts, last_error, updated_at)"
           " VALUES (?, '+1555', 'u1', ?, 1, ?, ?, ?, 1, 3, ?, ?)").replace("?", db.param)
    for mid, status, error in rows:
        db.execute_sql(sql, (mid, b"hi", status.value, at, at, error, at))
    return Storage(db)


def test_a_database_of_the_previous_schema_gains_the_crash_count_when_opened(database_url: str) -> None:
    """Opening it adds `interrupted`; a row the old text marks as interrupted, and whose run of
    crashes no outcome ended since, counts one, so being in flight again makes it a suspect;
    its last_error stays as users read it; opening it again backfills nothing."""
    storage = _previous_database(database_url, [
        (1, Status.PROCESSING, INTERRUPTED),  # interrupted, in flight again: a suspect
        (2, Status.PROCESSING, "TimeoutError: slow"),  # in flight after an ordinary failure
        (3, Status.RETRYING, INTERRUPTED),  # interrupted, waiting to be sent again
        (4, Status.COMPLETED, INTERRUPTED),  # sent after its interruption (COALESCE kept the text)
        (5, Status.FAILED, INTERRUPTED),  # failed as interrupted (at-most-once)
    ])
    try:
        storage.create_schema()
        assert [_interrupted(storage, mid) for mid in range(1, 6)] == [1, 0, 1, 0, 1]
        assert storage.interrupted_again() == [(1, "+1555")]
        assert storage.get(1).last_error == INTERRUPTED
        with storage.write_transaction():
            storage.record([Transition(1, 1, Status.COMPLETED, NOW)])
        storage.create_schema()
        assert _interrupted(storage, 1) == 0
        (later,) = insert(storage, new())
        assert later > 5 and _interrupted(storage, later) == 0
    finally:
        storage.close()

def test_an_accounts_open_work_is_read_through_its_own_index(storage: Storage,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The window is read from `open_by_account` in send order (the planner matches the
    index's condition), the next due instant from an index too: sent rows awaiting cleanup
    are never scanned and the window is never sorted."""
    insert(storage, *[new(phone=f"+1555{i % 7}") for i in range(200)])
    statements: list[tuple[str, Any]] = []
    execute = storage.db.execute_sql

    def recording(sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        statements.append((sql, params))
        return execute(sql, params, *args, **kwargs)

    monkeypatch.setattr(storage.db, "execute_sql", recording)
    storage.account_view("+15553", NOW, limit=64)
    monkeypatch.undo()
    reads = [(sql, params) for sql, params in statements if "FROM message_queue" in sql]
    assert len(reads) == 2  # the window, then the next due instant
    postgres = not isinstance(storage.db, SqliteDatabase)
    if postgres:
        storage.db.execute_sql("SET enable_seqscan = off")  # a tiny table would be read whole
    for sql, params in reads:
        explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
        plan = " ".join(str(row[-1] if not postgres else row[0])
                        for row in storage.db.execute_sql(explain + sql, params).fetchall())
        assert "message_queue_open_by_account" in plan or "messagerow_status_phone" in plan, plan
        if "ORDER BY" in sql:
            assert "message_queue_open_by_account" in plan, plan  # in send order, no sort


def test_pause_of_one_account_is_read_while_in_force(storage: Storage) -> None:
    """`pause(phone, now)` answers that account's pause in force, a pause until lifted included."""
    from postroom_common import AccountPause

    with storage.write_transaction():
        storage.set_pause(AccountPause("+1555", None, "AccountSuspended"), NOW)
        storage.set_pause(AccountPause("+other", NOW + timedelta(minutes=5), "RateLimited"), NOW)
    assert storage.pause("+1555", NOW) == AccountPause("+1555", None, "AccountSuspended")
    assert storage.pause("+other", NOW) == AccountPause("+other", NOW + timedelta(minutes=5), "RateLimited")
    assert storage.pause("+other", NOW + timedelta(minutes=5)) is None
    assert storage.pause("+nobody", NOW) is None


def test_demo_mark_is_absent_until_marked_and_survives_emptying(storage: Storage) -> None:
    """A new schema is no demo's; `mark_demo` marks it; `empty_tables` deletes all rows but the mark."""
    from postroom_common import AccountPause

    assert storage.has_schema() and not storage.is_demo()
    insert(storage, new(), new(phone="+other"))
    with storage.write_transaction():
        storage.set_pause(AccountPause("+1555", None, "AccountSuspended"), NOW)
        storage.mark_demo()
        storage.mark_demo()  # marking twice is harmless
    assert storage.is_demo()
    with _owned(storage) as owned, owned.write_transaction():
        owned.empty_tables()
    assert storage.is_demo() and storage.stats().total == 0 and storage.pauses(NOW) == []
    assert insert(storage, new())  # ids are still handed out after emptying


@contextmanager
def _owned(storage: Storage) -> Iterator[Storage]:
    """`storage`'s database as its owner: the owner lock held, as a supervisor holds it."""
    lock = OwnerLock(storage.db)
    lock.acquire()
    owned = Storage(storage.db, owner=lock)
    try:
        yield owned
    finally:
        owned.close()
        lock.release()


def test_emptying_needs_the_owner_lock(storage: Storage) -> None:
    """`empty_tables` on a storage without the owner lock raises and deletes nothing."""
    insert(storage, new())
    with storage.write_transaction():
        storage.mark_demo()
    with pytest.raises(PostroomError, match="owner lock"), storage.write_transaction():
        storage.empty_tables()
    assert storage.stats().total == 1


def test_create_schema_removes_the_demo_mark_unless_told_to_keep_it(storage: Storage) -> None:
    """A real owner's `create_schema` makes a demo's database a real queue; the demo's own keeps it."""
    with storage.write_transaction():
        storage.mark_demo()
    storage.create_schema(keep_demo_mark=True)
    assert storage.is_demo()
    storage.create_schema()
    assert not storage.is_demo()
    storage.create_schema()  # nothing to remove: harmless
    assert not storage.is_demo()


def test_not_from_demo_counts_the_messages_without_the_demo_key_prefix(storage: Storage) -> None:
    """Messages without a key, or with a key not beginning with the demo's prefix, are not the demo's."""
    assert storage.not_from_demo() == 0
    insert(storage, new(key=f"{DEMO_KEY_PREFIX}run:1"), new(key=f"{DEMO_KEY_PREFIX}run:2"))
    assert storage.not_from_demo() == 0
    insert(storage, new(), new(key="order-17"), new(key=DEMO_KEY_PREFIX.upper() + "x"),
           new(key=DEMO_KEY_PREFIX[:-1]))
    assert storage.not_from_demo() == 4


def test_a_database_without_postroom_tables_has_no_schema_and_no_mark(database_url: str) -> None:
    """Before `create_schema`, `has_schema` and `is_demo` answer False without creating anything."""
    store = Storage(open_database(database_url))
    try:
        assert not store.has_schema() and not store.is_demo()
        assert not store.has_schema()  # reading created no table
    finally:
        store.close()


def test_account_pause_round_trips(storage: Storage) -> None:
    """An account pause is stored, replaced, read while in force, and lifted."""
    from postroom_common import AccountPause

    with storage.write_transaction():
        storage.set_pause(AccountPause("+1555", NOW + timedelta(seconds=30), "RateLimited"), NOW)
        storage.set_pause(AccountPause("+1555", NOW + timedelta(hours=6), "AccountSuspended"), NOW)
    (pause,) = storage.pauses(NOW)
    assert pause == AccountPause("+1555", NOW + timedelta(hours=6), "AccountSuspended")
    assert storage.pauses(NOW + timedelta(hours=7)) == []
    with storage.write_transaction():
        assert storage.clear_pause("+1555")
    assert storage.pauses(NOW) == []


def test_account_disabled_until_lifted(storage: Storage) -> None:
    """A pause without an end (banned, session revoked) holds at any time until it is lifted."""
    from postroom_common import AccountPause

    with storage.write_transaction():
        storage.set_pause(AccountPause("+1555", None, "AccountSuspended"), NOW)
    years_later = NOW + timedelta(days=3650)
    assert storage.pauses(years_later) == [AccountPause("+1555", None, "AccountSuspended")]
    assert storage.account_view("+1555", years_later, limit=1).pause == AccountPause(
        "+1555", None, "AccountSuspended")
    with storage.write_transaction():
        assert storage.clear_pause("+1555")
    assert storage.account_view("+1555", NOW, limit=1).pause is None


def test_opening_without_create_needs_the_sqlite_file_and_creates_nothing(tmp_path: Any) -> None:
    """`open_database(url, create=False)` on a missing SQLite file raises DatabaseNotFound, writes nothing."""
    from postroom_common import DatabaseNotFound

    missing = tmp_path / "nowhere" / "missing.db"
    with pytest.raises(DatabaseNotFound, match="no database at"):
        open_database(f"sqlite:///{missing}", create=False)
    assert not missing.parent.exists()


def test_owner_lock_is_one_lock_whichever_way_the_file_was_opened(sqlite_url: str) -> None:
    """A file opened with create=False shares the owner lock of the same file opened normally."""
    from postroom_common import DatabaseLocked
    from storage import OwnerLock

    held = OwnerLock(open_database(sqlite_url))
    held.acquire()
    try:
        with pytest.raises(DatabaseLocked):
            OwnerLock(open_database(sqlite_url, create=False)).acquire()
    finally:
        held.release()


def test_claim_refuses_the_messages_of_a_paused_account(storage: Storage) -> None:
    """A pause in force (written by any process) holds at the claim: the account's messages
    stay open; other accounts' are claimed; once the pause ends, they are claimed."""
    from postroom_common import AccountPause

    held, free = insert(storage, new(phone="+paused"), new(phone="+free"))
    with storage.write_transaction():
        storage.set_pause(AccountPause("+paused", NOW + timedelta(minutes=1), "operator"), NOW)
    with storage.write_transaction():
        assert set(storage.claim([held, free], NOW)) == {free}
    assert storage.get(held).status is Status.PENDING and storage.get(held).attempts == 0
    with storage.write_transaction():
        assert set(storage.claim([held], NOW + timedelta(minutes=1))) == {held}
