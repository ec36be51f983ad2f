"""The SQLite file under a running supervisor, the files and directories postroom makes,
and the errors of opening a database by URL."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from postroom_common import StorageError, ValidationError
from storage import Storage, open_database
from supervisor import Enqueue, GetHealth, GetStats, Supervisor
from tests.conftest import LogCapture
from tests.integration.helpers import RecordingSender

SUFFIXES = ("", "-wal", "-shm")


def later_enqueue(text: str = "hi") -> Enqueue:
    # Due in an hour: no account runs, so every commit is one of the test's enqueues.
    return Enqueue(phone="+1555", user_id="u", text=text,
                   scheduled_at=datetime.now(UTC) + timedelta(hours=1))


def remove_database(db: Path) -> None:
    for suffix in SUFFIXES:
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def replace_database(db: Path) -> None:
    """Put another database in place of the file, as a restore from a backup might."""
    remove_database(db)
    other = db.with_name("other.db")
    with contextlib.closing(sqlite3.connect(other)) as connection:
        connection.execute("CREATE TABLE restored (x)")
    os.replace(other, db)


@pytest.mark.parametrize("change", [remove_database, replace_database], ids=["deleted", "replaced"])
def test_a_deleted_or_replaced_database_file_is_noticed_at_the_next_commit(
        tmp_path: Path, change: Callable[[Path], None]) -> None:
    """After the file is deleted (or replaced) under a running supervisor, the next enqueue
    gets StorageError instead of an acknowledgement, health says why, reads and every later
    enqueue are refused, and no thread of the supervisor creates a new database file."""
    db = tmp_path / "q.db"
    ref = Supervisor.start(database=f"sqlite:///{db}", sender=RecordingSender())
    for n in range(3):
        ref.ask(later_enqueue(str(n)))
    assert not ref.ask(GetHealth()).degraded
    change(db)
    left = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    with pytest.raises(StorageError, match="deleted or replaced"):
        ref.ask(later_enqueue("after"))
    health = ref.ask(GetHealth())
    assert health.degraded and "deleted or replaced" in (health.last_error or "")
    assert "restart" in (health.last_error or "")
    with pytest.raises(StorageError):
        ref.ask(GetStats())
    with pytest.raises(StorageError, match="deleted or replaced"):
        ref.ask(later_enqueue("still after"))
    ref.stop()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == left


def test_a_connection_never_creates_a_missing_database_file(tmp_path: Path) -> None:
    """A database whose file vanished after it was opened fails to connect, with StorageError,
    instead of starting a new empty file in its place."""
    db = tmp_path / "q.db"
    store = Storage(open_database(f"sqlite:///{db}"))
    store.create_schema()
    store.close()
    remove_database(db)
    with pytest.raises(StorageError):
        store.stats()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask set to the parameter for the test's duration."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


@pytest.mark.parametrize("umask", [0o000, 0o277], indirect=True)
def test_created_directories_are_0700_and_the_file_0600_whatever_the_umask(
        tmp_path: Path, umask: int) -> None:
    """Every missing directory of a new database's path is made 0700 and the file 0600: the
    umask neither widens (000) nor narrows (277) them."""
    db = tmp_path / "a" / "b" / "c" / "q.db"
    open_database(f"sqlite:///{db}").close()
    for directory in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_an_open_database_file_is_kept_as_made_and_warned_about_once(
        tmp_path: Path, logs: LogCapture) -> None:
    """A database file others can read stays as its user made it; each open logs one warning
    `storage.file_permissions` with its mode."""
    db = tmp_path / "q.db"
    Supervisor.start(database=f"sqlite:///{db}", sender=RecordingSender()).stop()
    assert logs.events("storage.file_permissions") == []
    db.chmod(0o644)

    Supervisor.start(database=f"sqlite:///{db}", sender=RecordingSender()).stop()

    (warning,) = logs.events("storage.file_permissions")
    assert warning["log_level"] == "warning" and warning["mode"] == "0644"
    assert stat.S_IMODE(db.stat().st_mode) == 0o644


@pytest.mark.parametrize("bare", ["postroom.db", "data/postroom.db", "/var/lib/postroom/postroom.db"])
def test_a_bare_path_is_refused_with_the_url_to_write(bare: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A path given instead of a URL is a ValidationError that spells the URL to write and
    explains three slashes (relative path) against four (absolute); nothing is created."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError) as refused:
        Supervisor.start(database=bare, sender=RecordingSender())
    text = str(refused.value)
    assert f"sqlite:///{bare}" in text, text
    assert "three slashes" in text and "four" in text, text
    assert list(tmp_path.iterdir()) == []


def test_two_slashes_are_refused_rather_than_misread(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`sqlite://q.db` (one slash short) is a ValidationError naming the right spelling, never
    a file at some other path."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match=r"sqlite:///q\.db"):
        open_database("sqlite://q.db")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("below", ["q.db", "sub/q.db"])
def test_a_database_whose_directory_cannot_be_made_raises_storage_error(tmp_path: Path, below: str) -> None:
    """When the database's directory is a regular file (or lies below one), start() raises
    StorageError caused by the OSError, not a bare OSError."""
    (tmp_path / "file.txt").write_text("not a directory")
    with pytest.raises(StorageError, match=r"file\.txt") as failed:
        Supervisor.start(database=f"sqlite:///{tmp_path}/file.txt/{below}", sender=RecordingSender())
    assert isinstance(failed.value.__cause__, OSError)
    assert (tmp_path / "file.txt").read_text() == "not a directory"


def _descriptors_of(db: Path) -> int:
    """This process's file descriptors open on the database's files."""
    names = {f"{db}{suffix}" for suffix in SUFFIXES}
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") in names
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_the_connection_of_a_thread_that_exited_is_closed_at_the_next_connect(tmp_path: Path) -> None:
    """A pool's thread exits when idle; its connection is closed when the next thread opens
    one, so a long-lived process whose threads come and go does not gather open files."""
    db = tmp_path / "q.db"
    store = Storage(open_database(f"sqlite:///{db}"))
    store.create_schema()
    store.close()

    def read_in_a_thread() -> None:
        thread = threading.Thread(target=store.stats)
        thread.start()
        thread.join()

    for _ in range(5):
        read_in_a_thread()
    settled = _descriptors_of(db)
    assert settled >= 1  # the last thread's connection is still open: nobody connected since
    for _ in range(20):
        read_in_a_thread()
    assert _descriptors_of(db) == settled  # each new one closed the exited ones': no growth
    store.close_all()
    assert _descriptors_of(db) == 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_a_closed_storage_opens_no_connection_again(tmp_path: Path) -> None:
    """After `close_all` (a supervisor's stop), a call from any thread, such as a read queued
    before the stop and run after it, raises StorageError and leaves no file open."""
    db = tmp_path / "q.db"
    store = Storage(open_database(f"sqlite:///{db}"))
    store.create_schema()
    store.close_all()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            store.stats()
        except StorageError as error:
            errors.append(error)

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert [type(e) for e in errors] == [StorageError]
    assert "the database was closed" in str(errors[0])
    with pytest.raises(StorageError, match="was closed"):
        store.stats()
    assert _descriptors_of(db) == 0
