"""A database that stops answering, or goes away: enqueues, health and stop stay bounded.

A stuck database is another session holding `LOCK TABLE message_queue` (or, on SQLite, another
process holding the write lock), or a network path that swallows everything (`TcpProxy.blackhole`:
the kernel still acknowledges every byte, so no TCP timeout ever fires). A database gone is a
deleted SQLite file or a closed proxy. In each case an enqueue gets StorageError within a bound,
`GetHealth` says degraded meanwhile, and a stop returns within `stop_timeout` and a few seconds
(within seconds when no send is in flight), whatever the database does.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pykka
import pytest

from actors.clock import FakeClock
from actors.directory import AccountDirectory
from actors.messages import BatchKind, Insert
from actors.persistence import HealthState, PersistenceActor
from actors.runtime import ThreadFuture, TurnPool
from postroom_common import NewMessage, Priority
from storage import OwnerLock, PostgresSettings, Storage, open_database
from supervisor import STOP_GRACE as GRACE
from supervisor import (
    AccountSettings,
    AsyncPostroom,
    Drain,
    Enqueue,
    EnqueueBatch,
    GetHealth,
    GetStats,
    Pacing,
    SqliteSettings,
    Status,
    StorageError,
    Supervisor,
    SupervisorSettings,
)
from tests.conftest import LogCapture, eventually
from tests.integration.helpers import FixedRandom, RecordingSender
from tests.integration.tcp_proxy import TcpProxy, through


@pytest.fixture(autouse=True)
def _collect_abandoned_connections() -> Iterator[None]:
    """A stop that gives up on a hung database leaves the connections it could not close to the
    garbage collector (their sockets shut down): collected here, after the test that made them,
    so that psycopg's ResourceWarning about them does not fail whichever test runs next."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


#: Seconds of scheduling noise allowed on top of every bound (a shared, loaded machine).
SLACK = 3.0
#: What the tests set: a lock wait, a statement, a connection, a commit before health says so.
LOCK, STATEMENT, CONNECT, SLOW_COMMIT = 2.0, 3.0, 2.0, 0.3
PHONES = [f"+1555000{i}" for i in range(4)]


def settings(stop_timeout: float = 75.0, **account: Any) -> SupervisorSettings:
    account.setdefault("idle_timeout", None)
    return SupervisorSettings(
        stop_timeout=stop_timeout, slow_commit_after=SLOW_COMMIT,
        postgres=PostgresSettings(statement_timeout=STATEMENT, lock_timeout=LOCK, connect_timeout=CONNECT),
        sqlite=SqliteSettings(busy_timeout=LOCK), account=AccountSettings(**account))


def timed_stop(ref: pykka.ActorRef[Supervisor]) -> float:
    started = time.monotonic()
    assert ref.stop(timeout=120)
    return time.monotonic() - started


def timed_refusal(ref: pykka.ActorRef[Supervisor], match: str) -> float:
    started = time.monotonic()
    with pytest.raises(StorageError, match=match):
        ref.ask(Enqueue(phone="+15550009", user_id="u", text="refused"), timeout=60)
    return time.monotonic() - started


def degraded_while_a_commit_waits(ref: pykka.ActorRef[Supervisor]) -> None:
    """An enqueue is told; before it fails, health already says a commit is waiting."""
    ref.tell(Enqueue(phone="+15550009", user_id="u", text="waits"))
    eventually(lambda: "waited" in (ref.ask(GetHealth()).last_error or ""), timeout=LOCK + SLACK)
    assert ref.ask(GetHealth()).degraded


def hung_send(ref: pykka.ActorRef[Supervisor], sender: RecordingSender) -> None:
    """One account's send hangs until `gate`, so a stop has a send in flight to wait for."""
    ref.ask(Enqueue(phone="+15550008", user_id="u", text="hangs"))
    sender.wait_for(1)


def gated_sender(gate: threading.Event) -> RecordingSender:
    return RecordingSender(lambda m, n: gate.wait(60) and None if m.text == "hangs" else None)


# -- PostgreSQL ----------------------------------------------------------------------------------


def with_query(url: str, query: str) -> str:
    return urlunsplit(urlsplit(url)._replace(query=query))


def session_settings(connection: psycopg.Connection[Any]) -> dict[str, str]:
    names = ("statement_timeout", "lock_timeout")
    shown = {name: connection.execute(f"SHOW {name}").fetchone()[0] for name in names}  # type: ignore[index]
    return {**connection.info.get_parameters(), **shown}


@pytest.mark.postgres
def test_every_postgres_connection_carries_the_timeouts_and_the_url_wins(postgres_url: str) -> None:
    """peewee's connections and the owner lock's own have a connect timeout, keepalives,
    tcp_user_timeout and the statement and lock timeouts; a parameter the URL sets wins."""
    url = with_query(postgres_url, "connect_timeout=7&options=-c%20lock_timeout%3D1234")
    db = open_database(url, postgres=PostgresSettings(statement_timeout=12.0, tcp_user_timeout=9.0))
    lock = OwnerLock(db)
    lock.acquire()
    try:
        for connection in (db.connection(), lock._lock._conn):  # type: ignore[attr-defined]
            got = session_settings(connection)
            assert (got["connect_timeout"], got["tcp_user_timeout"], got["keepalives"]) == ("7", "9000", "1")
            assert (got["keepalives_idle"], got["keepalives_interval"], got["keepalives_count"]) \
                == ("10", "5", "3")
            assert (got["statement_timeout"], got["lock_timeout"]) == ("12s", "1234ms")
    finally:
        db.close()
        lock.release()


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_a_locked_table_refuses_enqueues_in_bounded_time_and_stop_is_bounded(postgres_url: str) -> None:
    """Another session holds LOCK TABLE message_queue: health is degraded while a commit waits,
    an enqueue gets StorageError within the lock timeout, and a stop with a send in flight
    returns within stop_timeout and a few seconds while the lock is still held."""
    gate = threading.Event()
    sender = gated_sender(gate)
    ref = Supervisor.start(database=postgres_url, sender=sender, settings=settings(stop_timeout=1.0),
                           rng=FixedRandom())
    hung_send(ref, sender)
    locker = psycopg.connect(postgres_url)
    try:
        locker.execute("LOCK TABLE message_queue IN ACCESS EXCLUSIVE MODE")
        degraded_while_a_commit_waits(ref)
        assert timed_refusal(ref, "lock timeout") < LOCK + SLACK
        assert ref.ask(GetHealth()).degraded
        assert timed_stop(ref) < 1.0 + GRACE + CONNECT + SLACK
    finally:
        gate.set()
        locker.close()


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_a_black_holed_database_refuses_enqueues_in_bounded_time_and_stop_is_bounded(
        postgres_url: str, proxy: TcpProxy, logs: LogCapture) -> None:
    """Every byte to the database is swallowed and nothing comes back: health is degraded while a
    commit waits, an enqueue gets StorageError once its statement is past statement_timeout
    plus connect_timeout (postroom closes the connection), and a stop with a send in flight
    returns within stop_timeout and a few seconds."""
    gate = threading.Event()
    sender = gated_sender(gate)
    ref = Supervisor.start(database=through(postgres_url, proxy), sender=sender,
                           settings=settings(stop_timeout=1.0), rng=FixedRandom())
    hung_send(ref, sender)
    proxy.blackhole()
    try:
        degraded_while_a_commit_waits(ref)
        # Behind the commit that waits already, then at most a connection's opening of its own.
        assert timed_refusal(ref, ".") < STATEMENT + 2 * CONNECT + SLACK
        assert ref.ask(GetHealth()).degraded
        assert timed_stop(ref) < 1.0 + GRACE + CONNECT + SLACK
    finally:
        gate.set()
    assert logs.events("storage.statement_cut")


def busy_accounts(ref: pykka.ActorRef[Supervisor]) -> list[int]:
    """Accounts holding a window of due messages, claiming one at a time (paced)."""
    return list(ref.ask(EnqueueBatch([Enqueue(phone=phone, user_id=f"u{n}", text=str(n))
                                      for n in range(10) for phone in PHONES])))


def paced(stop_timeout: float = 75.0) -> SupervisorSettings:
    return SupervisorSettings(stop_timeout=stop_timeout, pacing=Pacing(rate=5.0),
                              account=AccountSettings(idle_timeout=None, storage_retry=0.2))


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_stop_returns_in_seconds_when_postgres_is_gone_and_the_next_start_settles_the_rest(
        postgres_url: str, proxy: TcpProxy, logs: LogCapture) -> None:
    """The database goes away under accounts holding windows, each with a claim or give-back it
    cannot write: with no send in flight the stop returns in seconds, not after stop_timeout;
    the rows it could not write are settled by the next start, and every message is sent."""
    sender = RecordingSender()
    ref = Supervisor.start(database=through(postgres_url, proxy), sender=sender, settings=paced(),
                           rng=FixedRandom())
    ids = busy_accounts(ref)
    sender.wait_for(len(PHONES))
    proxy.cut()
    eventually(lambda: len({e["account"] for e in logs.events("account.write_failed")}) == len(PHONES))
    assert timed_stop(ref) < SLACK + 2.0

    again = Supervisor.start(database=postgres_url, sender=sender, rng=FixedRandom())
    try:
        assert again.ask(Drain(timeout=60)) == 0
        assert again.ask(GetStats()).by_status[Status.COMPLETED] == len(ids)
        assert set(sender.ids()) == set(ids)
    finally:
        again.stop()


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_async_stop_with_a_hung_database_raises_no_pykka_error(
        postgres_url: str, proxy: TcpProxy, logs: LogCapture) -> None:
    """With default settings and the database black-holed under a commit, `AsyncPostroom.stop`
    given a short timeout returns (the stop goes on, logged), and without one returns once the
    supervisor has stopped, in seconds: no pykka.Timeout reaches the bot."""

    async def main() -> float:
        room = await AsyncPostroom.start(through(postgres_url, proxy), lambda m: None)
        await room.enqueue("+15550001", "u", "before")
        proxy.blackhole()
        room.ref.tell(Enqueue(phone="+15550001", user_id="u", text="hangs in the commit"))
        await room.stop(timeout=0.5)
        assert logs.events("supervisor.stop_pending")
        started = time.monotonic()
        await room.stop()
        return time.monotonic() - started

    default = SupervisorSettings()
    assert asyncio.run(main()) < default.slow_commit_after + GRACE + default.postgres.connect_timeout + SLACK


# -- SQLite --------------------------------------------------------------------------------------

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("LOCKED", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def write_lock_holder() -> Iterator[Any]:
    """Starts a process that holds a SQLite file's write lock until the test ends."""
    held: list[subprocess.Popen[str]] = []

    def hold(path: Path) -> None:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        held.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "LOCKED"

    yield hold
    for proc in held:
        proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.timeout(90)
def test_sqlite_write_lock_held_elsewhere_refuses_within_busy_timeout_and_stop_is_bounded(
        tmp_path: Path, write_lock_holder: Any) -> None:
    """Another process holds the write lock (BEGIN IMMEDIATE): health is degraded while a
    commit waits, an enqueue gets StorageError within busy_timeout, and a stop with a send in
    flight returns within stop_timeout and a few seconds."""
    path = tmp_path / "q.db"
    gate = threading.Event()
    sender = gated_sender(gate)
    ref = Supervisor.start(database=f"sqlite:///{path}", sender=sender,
                           settings=settings(stop_timeout=1.0), rng=FixedRandom())
    hung_send(ref, sender)
    write_lock_holder(path)
    try:
        degraded_while_a_commit_waits(ref)
        assert timed_refusal(ref, "locked") < LOCK + SLACK
        assert ref.ask(GetHealth()).degraded
        assert timed_stop(ref) < 1.0 + GRACE + LOCK + SLACK
    finally:
        gate.set()


@pytest.mark.timeout(90)
def test_stop_returns_in_seconds_after_the_sqlite_file_is_deleted(tmp_path: Path,
                                                                  logs: LogCapture) -> None:
    """The database file is deleted under accounts holding windows, each with a claim or
    give-back it cannot write: with no send in flight the stop returns in seconds."""
    path = tmp_path / "q.db"
    sender = RecordingSender()
    ref = Supervisor.start(database=f"sqlite:///{path}", sender=sender, settings=paced(),
                           rng=FixedRandom())
    busy_accounts(ref)
    sender.wait_for(len(PHONES))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    eventually(lambda: len({e["account"] for e in logs.events("account.write_failed")}) == len(PHONES))
    assert timed_stop(ref) < SLACK + 2.0
    assert logs.events("account.release_unrecorded")


def test_a_batch_the_locked_database_refuses_waits_one_busy_timeout_not_one_per_request(
        tmp_path: Path, write_lock_holder: Any) -> None:
    """Five enqueues in one commit while another process holds the write lock: all five get
    StorageError after one busy wait, not after a wait for each alone."""
    storage = Storage(open_database(f"sqlite:///{tmp_path}/q.db", SqliteSettings(busy_timeout=LOCK)))
    storage.create_schema()
    writer = PersistenceActor(TurnPool("test-writer", 2), storage, FakeClock(), HealthState(),
                              AccountDirectory(), pykka.ThreadingActor.start())
    write_lock_holder(tmp_path / "q.db")
    futures = [ThreadFuture() for _ in range(5)]
    started = time.monotonic()
    writer._commit([(Insert([new_message(str(n))], BatchKind.ONE), future)
                    for n, future in enumerate(futures)])
    waited = time.monotonic() - started
    for future in futures:
        with pytest.raises(StorageError, match="locked"):
            future.get(timeout=1)
    assert waited < 2 * LOCK
    storage.close_all()


def new_message(text: str) -> NewMessage:
    return NewMessage(phone="+15550001", user_id="u", text=text, attachment=None, priority=Priority.NORMAL,
                      created_at=datetime.now(UTC), scheduled_at=None, max_attempts=5, idempotency_key=None)
