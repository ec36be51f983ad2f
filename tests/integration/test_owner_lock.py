"""One owner per database: a second supervisor is refused, on SQLite by the file itself
(whatever path reaches it) and on PostgreSQL by a session advisory lock."""

from __future__ import annotations

import os
import queue
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from storage import OwnerLock, Storage, open_database
from supervisor import DatabaseLocked, Enqueue, GetMessage, Status, Supervisor
from tests.conftest import eventually, reset_postgres
from tests.integration.helpers import RecordingSender

ROOT = Path(__file__).resolve().parents[2]


class Child:
    """A `tests.integration.owner_child` process and the lines it prints."""

    def __init__(self, url: str, wait_for_go: bool = False) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "tests.integration.owner_child", url]
        self.proc = subprocess.Popen(command + (["--go"] if wait_for_go else []), cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.put(line.strip())
        self.lines.put("<exited>")

    def line(self, timeout: float = 30) -> str:
        """The next line it prints (`<exited>` once its stdout closed)."""
        return self.lines.get(timeout=timeout)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> int:
        """Close its stdin (a started child stops its supervisor) and wait for its exit."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL it (if it still runs) and wait for its end."""
        self.proc.kill()
        self.proc.wait(timeout=30)
        assert self.proc.stdin is not None
        self.proc.stdin.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Children started by the test; any still running at the end is killed."""
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


def spawn(children: list[Child], url: str, wait_for_go: bool = False) -> Child:
    child = Child(url, wait_for_go)
    children.append(child)
    assert child.line() == "ready"
    return child


def start_or_none(url: str) -> pykka.ActorRef[Supervisor] | None:
    """A supervisor on `url`, or None while another one owns the database."""
    try:
        return Supervisor.start(database=url, sender=RecordingSender())
    except DatabaseLocked:
        return None


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_second_supervisor_on_postgres_is_refused_until_the_owner_dies(
        postgres_url: str, children: list[Child]) -> None:
    """While a supervisor in another process owns the PostgreSQL database a second one is
    refused with DatabaseLocked naming the holder; once that process is SIGKILLed, a new one starts."""
    owner = spawn(children, postgres_url)
    assert owner.line() == "started"

    with pytest.raises(DatabaseLocked, match="another supervisor") as refused:
        Supervisor.start(database=postgres_url, sender=RecordingSender())
    assert "pid" in str(refused.value)

    owner.kill()
    ref = eventually(lambda: start_or_none(postgres_url), timeout=10)
    ref.stop()


@pytest.mark.postgres
def test_a_stopped_supervisor_releases_the_postgres_database(postgres_url: str) -> None:
    """Stopping a supervisor releases its lock: the next one starts at once, in the same process."""
    first = Supervisor.start(database=postgres_url, sender=RecordingSender())
    with pytest.raises(DatabaseLocked):
        Supervisor.start(database=postgres_url, sender=RecordingSender())
    first.stop()
    Supervisor.start(database=postgres_url, sender=RecordingSender()).stop()


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_supervisors_starting_together_on_an_empty_postgres_database(
        postgres_url: str, children: list[Child]) -> None:
    """Two processes starting at the same instant on an empty database: exactly one runs, the
    other gets DatabaseLocked, neither fails on the schema (repeated a few times)."""
    for _ in range(4):
        reset_postgres()
        pair = [spawn(children, postgres_url, wait_for_go=True) for _ in range(2)]
        for child in pair:
            child.go()
        outcomes = [child.line() for child in pair]
        assert sorted(outcomes) == ["locked", "started"], outcomes
        for child in pair:
            assert child.stop() == 0


@pytest.mark.postgres
def test_postgres_schema_creation_waits_for_the_schema_lock(postgres_url: str) -> None:
    """`create_schema` on PostgreSQL runs under a transaction-level advisory lock: it waits
    while another session holds that lock, and goes on when it is released."""
    import psycopg

    from storage.owner import SCHEMA_LOCK_KEY

    holder = psycopg.connect(postgres_url)  # a transaction is open from the first statement
    done = threading.Event()
    errors: list[BaseException] = []

    def create() -> None:
        store = Storage(open_database(postgres_url))
        try:
            store.create_schema()
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)
        finally:
            store.close()
            done.set()

    try:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        worker = threading.Thread(target=create, daemon=True)
        worker.start()
        eventually(lambda: _waiting_for_advisory_lock(holder, SCHEMA_LOCK_KEY) or done.is_set())
        assert not done.is_set(), "create_schema did not wait for the schema lock"
        holder.commit()
        assert done.wait(30) and errors == []
    finally:
        holder.close()


def _waiting_for_advisory_lock(conn: Any, key: int) -> bool:
    (count,) = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND classid = %s AND objid = %s AND objsubid = 1",
        ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)).fetchone()
    return bool(count)


@pytest.mark.postgres
def test_owner_lock_verify_retakes_a_lost_postgres_session(postgres_url: str) -> None:
    """`verify()` says the lock is held; after its session is killed it takes the lock again
    on a new connection (reporting the gap), and it fails with DatabaseLocked if another
    owner took the database meanwhile."""
    import psycopg

    lock = OwnerLock(open_database(postgres_url))
    lock.acquire()
    admin = psycopg.connect(postgres_url, autocommit=True)
    try:
        assert lock.verify() is True
        _terminate_lock_sessions(admin)
        assert lock.verify() is False  # lost, then taken again
        assert lock.verify() is True
        with pytest.raises(DatabaseLocked):
            OwnerLock(open_database(postgres_url)).acquire()

        _terminate_lock_sessions(admin)
        other = OwnerLock(open_database(postgres_url))
        other.acquire()
        with pytest.raises(DatabaseLocked, match="another supervisor"):
            lock.verify()
        other.release()
    finally:
        lock.release()
        admin.close()


@pytest.mark.postgres
def test_the_postgres_owner_lock_outlives_an_idle_session_timeout(postgres_url: str) -> None:
    """A server set to end idle sessions (idle_session_timeout) ends others, not the owner's
    lock session: the lock is still held, never lost and taken again."""
    import psycopg
    from psycopg import sql

    admin = psycopg.connect(postgres_url, autocommit=True)  # started before the setting: spared
    if admin.info.server_version < 140000:
        admin.close()
        pytest.skip("idle_session_timeout exists from PostgreSQL 14 on")
    (name,) = admin.execute("SELECT current_database()").fetchone() or ("",)
    database = sql.Identifier(name)
    try:
        admin.execute(sql.SQL("ALTER DATABASE {} SET idle_session_timeout = '300ms'").format(database))
    except psycopg.errors.InsufficientPrivilege as error:
        admin.close()
        pytest.skip(f"the test role may not set idle_session_timeout on its database: {error}")
    lock = OwnerLock(open_database(postgres_url))
    try:
        lock.acquire()
        idle = psycopg.connect(postgres_url, autocommit=True)
        idle_pid = idle.info.backend_pid
        eventually(lambda: not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                             (idle_pid,)).fetchall())
        idle.close()
        assert lock.verify() is True
    finally:
        admin.execute(sql.SQL("ALTER DATABASE {} RESET idle_session_timeout").format(database))
        lock.release()
        admin.close()


def _terminate_lock_sessions(admin: Any) -> None:
    from storage.owner import OWNER_LOCK_KEY

    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = %s AND objid = %s AND objsubid = 1"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        ((OWNER_LOCK_KEY >> 32) & 0xFFFFFFFF, OWNER_LOCK_KEY & 0xFFFFFFFF))
    eventually(lambda: not admin.execute(
        "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objid = %s",
        ((OWNER_LOCK_KEY >> 32) & 0xFFFFFFFF, OWNER_LOCK_KEY & 0xFFFFFFFF)).fetchall())


# -- SQLite ---------------------------------------------------------------------------------


def test_every_path_to_the_sqlite_file_is_refused_while_a_supervisor_owns_it(
        tmp_path: Path, children: list[Child]) -> None:
    """A symlink, a hard link and `dir/../q.db` all reach the owned file: each is refused with
    DatabaseLocked (in this process and in another one), and the owner carries on unharmed."""
    db = tmp_path / "q.db"
    sender = RecordingSender()
    owner = Supervisor.start(database=f"sqlite:///{db}", sender=sender)
    (tmp_path / "link.db").symlink_to(db)
    os.link(db, tmp_path / "hard.db")
    (tmp_path / "dir").mkdir()
    spellings = [tmp_path / "link.db", tmp_path / "hard.db", f"{tmp_path}/dir/../q.db"]

    for path in spellings:
        with pytest.raises(DatabaseLocked):
            Supervisor.start(database=f"sqlite:///{path}", sender=RecordingSender())
    for path in spellings[:2]:
        other = spawn(children, f"sqlite:///{path}")
        assert other.line() == "locked"

    message_id = owner.ask(Enqueue(phone="+1555", user_id="u", text="still mine"))
    sender.wait_for(1)
    eventually(lambda: owner.ask(GetMessage(message_id)).status is Status.COMPLETED)
    assert not list(tmp_path.glob("*.lock"))
    owner.stop()


def test_a_planted_lock_symlink_is_never_followed(tmp_path: Path) -> None:
    """A `q.db.lock` symlink planted beside the database is neither followed, created through
    nor chmod-ed: its target keeps its mode and content, a missing target stays missing."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    victim.chmod(0o644)
    (tmp_path / "q.db.lock").symlink_to(victim)
    (tmp_path / "r.db.lock").symlink_to(tmp_path / "created-through-the-link.txt")

    for name in ("q.db", "r.db"):
        Supervisor.start(database=f"sqlite:///{tmp_path / name}", sender=RecordingSender()).stop()

    assert stat.S_IMODE(victim.stat().st_mode) == 0o644 and victim.read_text() == "precious"
    assert not (tmp_path / "created-through-the-link.txt").exists()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc/self/fd")
def test_refused_starts_in_the_owners_process_keep_no_descriptor(tmp_path: Path) -> None:
    """Starting again and again beside the owner, in its own process, leaves no descriptor
    open per refused attempt."""
    db = tmp_path / "q.db"
    owner = Supervisor.start(database=f"sqlite:///{db}", sender=RecordingSender())
    (tmp_path / "link.db").symlink_to(db)

    def refused() -> None:
        with pytest.raises(DatabaseLocked):
            Supervisor.start(database=f"sqlite:///{tmp_path / 'link.db'}", sender=RecordingSender())

    refused()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        refused()
    assert len(os.listdir("/proc/self/fd")) < before + 5
    owner.stop()
