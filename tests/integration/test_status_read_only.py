"""`postroom status` only reads: the database's file, journal mode and WAL are left as found,
and a file its user can only read is enough. Each status runs as a real process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from postroom_common import DatabaseNotFound, NewMessage, Priority, StorageError
from storage import Storage, open_database

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def news(count: int) -> list[NewMessage]:
    return [NewMessage(phone=f"+1555{n % 3}", user_id="u", text="hi", attachment=None,
                       priority=Priority.NORMAL, created_at=NOW, scheduled_at=None, max_attempts=3,
                       idempotency_key=None) for n in range(count)]


def make_database(db: Path, count: int) -> None:
    """A postroom database with `count` pending messages, closed cleanly (no WAL left)."""
    store = Storage(open_database(f"sqlite:///{db}"))
    store.create_schema()
    with store.write_transaction():
        store.insert(news(count))
    store.close()


def status(url: str, python: str = sys.executable, **run: Any) -> dict[str, Any]:
    """`postroom status --json` in a process of its own; its parsed output."""
    done = subprocess.run([python, "-m", "postroom_cli", "status", "--database", url, "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=run.pop("env", {**os.environ, "PYTHONPATH": str(ROOT)}), **run)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def test_status_leaves_a_rollback_journal_database_as_it_is(tmp_path: Path) -> None:
    """A database in rollback-journal mode (journal_mode=delete) is still one after `status`,
    byte for byte."""
    db = tmp_path / "q.db"
    make_database(db, 4)
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("PRAGMA journal_mode = delete")
    before = db.read_bytes()
    assert before[18:20] == b"\x01\x01"  # the header's read/write versions: 1 is rollback journal

    assert status(f"sqlite:///{db}")["total"] == 4

    assert db.read_bytes() == before
    assert not Path(f"{db}-wal").exists()


def test_status_leaves_the_wal_of_a_crashed_writer_in_place(tmp_path: Path) -> None:
    """A WAL holding commits of a process that was SIGKILLed is read, not checkpointed: the
    database file's bytes and the WAL stay as they were."""
    db = tmp_path / "q.db"
    make_database(db, 0)
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITE_AND_WAIT, str(db)], cwd=ROOT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert writer.stdin is not None and writer.stdout is not None
    with writer, writer.stdin, writer.stdout:
        try:
            assert writer.stdout.readline().strip() == "committed"
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
    wal = Path(f"{db}-wal")
    before, wal_before = db.read_bytes(), wal.read_bytes()
    assert wal_before, "the writer left no WAL: the test would prove nothing"

    assert status(f"sqlite:///{db}")["total"] == 5  # the committed rows, read from the WAL

    assert db.read_bytes() == before
    assert wal.read_bytes() == wal_before


_WRITE_AND_WAIT = """
import sys
from tests.integration.test_status_read_only import news
from storage import Storage, open_database
store = Storage(open_database("sqlite:///" + sys.argv[1]))
with store.write_transaction():
    store.insert(news(5))
print("committed", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory under the system temp dir that every user may enter (tmp_path is private)."""
    path = Path(tempfile.mkdtemp(prefix="postroom-status-"))
    path.chmod(0o755)
    yield path
    for inner in path.rglob("*"):
        if inner.is_dir():
            inner.chmod(0o755)
    shutil.rmtree(path)


def test_status_reads_a_file_its_user_can_only_read(tmp_path: Path, shared_dir: Path) -> None:
    """Run as user nobody, `status` reads a 0444 database in a 0555 directory (which it can
    neither write nor create a WAL index in)."""
    python, env = _python_for_nobody()
    make_database(tmp_path / "q.db", 3)
    directory = shared_dir / "readonly"
    directory.mkdir()
    db = directory / "q.db"
    shutil.copyfile(tmp_path / "q.db", db)
    db.chmod(0o444)
    directory.chmod(0o555)

    report = status(f"sqlite:///{db}", python, env=env, user=NOBODY, group=NOBODY, extra_groups=[])

    assert report["total"] == 3
    assert sorted(p.name for p in directory.iterdir()) == ["q.db"]


def _python_for_nobody() -> tuple[str, dict[str, str]]:
    """An interpreter of this Python version that user nobody can run with postroom and its
    dependencies importable; skips when none is found or the OS refuses to switch users."""
    import site

    paths = os.pathsep.join([str(ROOT), *site.getsitepackages()])
    env = {"PYTHONPATH": paths, "PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent",
           "PYTHONDONTWRITEBYTECODE": "1"}
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, os.path.realpath(sys.executable), getattr(sys, "_base_executable", ""),
                  shutil.which(f"python{version}") or "", f"/usr/bin/python{version}"]
    for python in dict.fromkeys(c for c in candidates if c):
        try:
            probe = subprocess.run([python, "-c", "import postroom_cli.status, storage"], env=env,
                                   capture_output=True, timeout=60, user=NOBODY, group=NOBODY,
                                   extra_groups=[])
        except PermissionError as error:
            if error.filename is None:
                pytest.skip(f"the OS refuses to run a process as user nobody: {error}")
            continue  # this interpreter's path is not open to nobody
        except OSError:
            continue
        if probe.returncode == 0:
            return python, env
    pytest.skip(f"no Python {version} interpreter that user nobody can run with postroom importable "
                f"(tried {candidates})")


@pytest.mark.postgres
def test_a_read_only_postgres_session_refuses_writes(postgres_url: str) -> None:
    """`open_database(url, read_only=True)` on PostgreSQL reads, and any write fails with StorageError."""
    writer = Storage(open_database(postgres_url))
    writer.create_schema()
    with writer.write_transaction():
        writer.insert(news(2))
    writer.close()

    reader = Storage(open_database(postgres_url, read_only=True))
    try:
        assert reader.stats().total == 2
        with pytest.raises(StorageError, match="read-only"), reader.write_transaction():
            reader.insert(news(1))
    finally:
        reader.close()


def test_a_read_only_sqlite_open_creates_nothing(tmp_path: Path) -> None:
    """Opening a missing SQLite file read-only fails with DatabaseNotFound and creates neither
    the file nor its directory."""
    with pytest.raises(DatabaseNotFound):
        open_database(f"sqlite:///{tmp_path}/sub/q.db", read_only=True)
    assert list(tmp_path.iterdir()) == []
