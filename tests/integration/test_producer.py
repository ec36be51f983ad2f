"""Producers: any process enqueues into, cancels and requeues in a queue that a supervisor
(maybe in another process) sends from; the owner notices through the change feed (a poll on
SQLite, LISTEN/NOTIFY on PostgreSQL) and obeys."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from storage import Storage, open_database
from supervisor import (
    AsyncProducer,
    DatabaseNotFound,
    Drain,
    Enqueue,
    GetMessage,
    IdempotencyConflict,
    Message,
    PermanentError,
    Producer,
    SchemaMismatch,
    Status,
    Supervisor,
    SupervisorSettings,
    ValidationError,
)
from tests.conftest import eventually
from tests.integration.helpers import RecordingSender

ROOT = Path(__file__).resolve().parents[2]


def _start(url: str, sender: Any, **settings: Any) -> Any:
    return Supervisor.start(database=url, sender=sender, settings=SupervisorSettings(**settings))


def test_a_producer_beside_a_running_supervisor_is_sent(database_url: str) -> None:
    """A message a producer enqueues (its id answered once committed) is sent by the running
    owner without a restart; the same for a batch and a broadcast."""
    sender = RecordingSender()
    ref = _start(database_url, sender)
    try:
        with Producer(database_url) as producer:
            one = producer.enqueue(phone="+15550001", user_id=42, text="hi")
            batch = producer.enqueue_batch([Enqueue(phone="+15550002", user_id="7", text=f"b{i}")
                                            for i in range(3)])
            many = producer.broadcast([("+15550003", "1"), ("+15550004", "2")], text="all")
            assert producer.get(one).status in (Status.PENDING, Status.PROCESSING, Status.COMPLETED)
        expected = {one, *batch, *many}
        eventually(lambda: expected <= set(sender.ids()), timeout=15)
        assert ref.ask(Drain(timeout=15)) == 0
    finally:
        ref.stop()


def test_a_producer_works_while_no_supervisor_runs(database_url: str) -> None:
    """Rows a producer writes while nothing sends wait for the next supervisor, which sends them."""
    _start(database_url, RecordingSender()).stop()  # the schema, as a deployment makes it
    with Producer(database_url) as producer:
        ids = [producer.enqueue(phone="+15550001", user_id=str(n), text="later") for n in range(3)]
    sender = RecordingSender()
    ref = _start(database_url, sender)
    try:
        assert sender.wait_for(3) == ids
    finally:
        ref.stop()


def test_a_producer_checks_at_the_same_door(database_url: str) -> None:
    """The supervisor's validation, typed errors and idempotency keys, nothing written when refused."""
    _start(database_url, RecordingSender()).stop()
    with Producer(database_url) as producer:
        with pytest.raises(ValidationError, match="phone"):
            producer.enqueue(phone="", user_id=1, text="hi")
        with pytest.raises(ValidationError):
            producer.enqueue(phone="+1555\u202e", user_id=1, text="hi")
        first = producer.enqueue(phone="+15550001", user_id=1, text="hi", idempotency_key="k1")
        assert producer.enqueue(phone="+15550001", user_id=1, text="hi", idempotency_key="k1") == first
        with pytest.raises(IdempotencyConflict):
            producer.enqueue(phone="+15550001", user_id=1, text="other", idempotency_key="k1")
        store = producer.storage
        assert store.stats().total == 1


def test_a_producer_never_creates_nor_migrates_a_schema(tmp_path: Path, database_url: str) -> None:
    """A missing SQLite file is DatabaseNotFound (never created); a database without postroom's
    schema, or an older one, is SchemaMismatch naming `postroom migrate`, nothing written."""
    with pytest.raises(DatabaseNotFound):
        Producer(f"sqlite:///{tmp_path}/missing.db")
    assert not (tmp_path / "missing.db").exists()
    if database_url.startswith("sqlite"):
        open_database(database_url).connect()  # an empty file
    with pytest.raises(SchemaMismatch, match="postroom migrate"):
        Producer(database_url)
    store = Storage(open_database(database_url))
    try:
        assert store.schema_version() is None
        store.create_schema()
        store.db.execute_sql("UPDATE postroom_meta SET value = 1 WHERE key = 'schema_version'")
        with pytest.raises(SchemaMismatch, match="older"):
            Producer(database_url)
    finally:
        store.close_all()


def test_a_producer_cancel_is_obeyed_by_the_running_account(database_url: str) -> None:
    """A message cancelled by a producer while its account runs (another message of the account
    being sent) is never sent afterwards; the account goes on with the rest."""
    release = threading.Event()

    def slow_first(message: Message, call: int) -> None:
        if message.text == "first":
            release.wait(10)

    sender = RecordingSender(slow_first)
    ref = _start(database_url, sender)
    try:
        first = ref.ask(Enqueue(phone="+15550001", user_id="1", text="first"))
        doomed = ref.ask(Enqueue(phone="+15550001", user_id="2", text="doomed"))
        last = ref.ask(Enqueue(phone="+15550001", user_id="3", text="last"))
        sender.wait_for(1)
        with Producer(database_url) as producer:
            assert producer.cancel(doomed).status is Status.CANCELLED
        release.set()
        assert ref.ask(Drain(timeout=15)) == 0
        assert sender.ids() == [first, last]
    finally:
        release.set()
        ref.stop()


def test_a_producer_requeue_is_sent_again(database_url: str) -> None:
    """A failed message a producer requeues is sent by the running owner."""

    def fail_once(message: Message, call: int) -> None:
        if call == 1:
            raise PermanentError("blocked")

    sender = RecordingSender(fail_once)
    ref = _start(database_url, sender)
    try:
        mid = ref.ask(Enqueue(phone="+15550001", user_id="1", text="hi"))
        eventually(lambda: ref.ask(GetMessage(mid)).status is Status.FAILED)
        with Producer(database_url) as producer:
            assert producer.requeue(mid).status is Status.PENDING
        eventually(lambda: ref.ask(GetMessage(mid)).status is Status.COMPLETED)
        assert sender.ids() == [mid, mid]
    finally:
        ref.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_producer_processes_beside_a_supervisor_collide_on_no_id(database_url: str) -> None:
    """Two producer processes enqueue at once beside a running supervisor: every id answered
    is distinct and every message is sent once."""
    sender = RecordingSender()
    ref = _start(database_url, sender)
    try:
        children = [subprocess.Popen([sys.executable, "-m", "tests.integration.producer_child",
                                      database_url, tag, "150"], cwd=ROOT, stdout=subprocess.PIPE,
                                     text=True) for tag in ("a", "b")]
        answered: list[int] = []
        for child in children:
            out, _ = child.communicate(timeout=90)
            lines = out.split()
            assert lines[-1] == "done" and child.returncode == 0
            answered += [int(line) for line in lines[:-1]]
        assert len(answered) == len(set(answered)) == 300
        assert ref.ask(Drain(timeout=60)) == 0
        assert sorted(sender.ids()) == sorted(answered)
    finally:
        ref.stop()


def test_an_async_producer_enqueues_off_the_loop(database_url: str) -> None:
    """AsyncProducer: every call awaited, the message sent by the running owner."""
    sender = RecordingSender()
    ref = _start(database_url, sender)

    async def produce() -> int:
        async with await AsyncProducer.open(database_url) as producer:
            return await producer.enqueue(phone="+15550001", user_id="1", text="from a web app")

    try:
        mid = asyncio.run(produce())
        eventually(lambda: sender.ids() == [mid])
    finally:
        ref.stop()


@pytest.mark.postgres
def test_a_lost_listen_connection_is_replaced(postgres_url: str) -> None:
    """The owner's LISTEN connection is ended by the server: it listens again, and a
    producer's message is noticed without waiting for the safety poll."""
    sender = RecordingSender()
    ref = _start(postgres_url, sender, feed_safety_interval=3600.0)
    try:
        with Producer(postgres_url) as producer:
            first = producer.enqueue(phone="+15550001", user_id="1", text="hi")
            eventually(lambda: sender.ids() == [first])
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                killed = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                      " WHERE query LIKE 'LISTEN%' AND datname = current_database()"
                                      " AND pid <> pg_backend_pid()").fetchall()
            assert killed == [(True,)]
            eventually(lambda: _listening(postgres_url), timeout=15)
            second = producer.enqueue(phone="+15550002", user_id="2", text="again")
            eventually(lambda: sender.ids() == [first, second], timeout=15)
    finally:
        ref.stop()


def _listening(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"
                                " AND datname = current_database()").fetchone()  # type: ignore[misc]
    return bool(count)


@pytest.mark.postgres
def test_without_listen_the_owner_polls_the_feed(postgres_url: str) -> None:
    """feed_listen=False (a pooler in transaction mode): no LISTEN, the feed is polled."""
    sender = RecordingSender()
    ref = _start(postgres_url, sender, feed_listen=False)
    try:
        assert not _listening(postgres_url)
        with Producer(postgres_url) as producer:
            mid = producer.enqueue(phone="+15550001", user_id="1", text="hi")
        eventually(lambda: sender.ids() == [mid])
    finally:
        ref.stop()


def test_bad_feed_settings_are_refused() -> None:
    """The feed's intervals must be positive numbers of seconds."""
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValidationError, match="feed_poll_interval"):
            replace(SupervisorSettings(), feed_poll_interval=bad)


def test_the_feed_is_read_in_order_and_trimmed(storage: Storage) -> None:
    """Entries announced in a transaction are read once, in order, by a cursor taken before
    them; trim_changes deletes those written before its cutoff."""
    from datetime import UTC, datetime, timedelta

    from postroom_common import Change, ChangeKind

    now = datetime(2030, 1, 1, tzinfo=UTC)
    cursor = storage.feed_cursor(0.0)
    with storage.write_transaction():
        storage.announce([Change(ChangeKind.INSERTED, first_id=1, last_id=5)], now)
    with storage.write_transaction():
        storage.announce([Change(ChangeKind.PAUSED, phone="+1"), Change(ChangeKind.CANCELLED, "+1", 3, 3)],
                         now + timedelta(hours=2))
    read = storage.read_changes(cursor, 1.0)
    assert [(c.kind, c.phone, c.first_id, c.last_id) for c in read] == [
        (ChangeKind.INSERTED, None, 1, 5), (ChangeKind.PAUSED, "+1", None, None),
        (ChangeKind.CANCELLED, "+1", 3, 3)]
    assert storage.read_changes(cursor, 2.0) == []
    with storage.write_transaction():
        assert storage.trim_changes(now + timedelta(hours=1)) == 1
    (left,) = storage.db.execute_sql("SELECT COUNT(*) FROM postroom_changes").fetchone()
    assert left == 2
