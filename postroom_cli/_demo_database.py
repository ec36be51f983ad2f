"""The demo's own database: `postroom demo` touches no database it did not create, or that
anyone else has written to.

The demo marks what it creates (`Storage.mark_demo`): a SQLite file that did not
exist, or a PostgreSQL database with none of postroom's tables. Any other supervisor
removes the mark when it starts, and every message the demo writes carries an
idempotency key beginning with `DEMO_KEY_PREFIX`. The demo refuses, before anything is
written and with or without --keep, a database without the mark or holding a message
without such a key (a producer's, a script's). Every look happens under the owner lock,
so a database a supervisor runs on is refused (`DatabaseLocked`) untouched. On its own
database the demo starts afresh (SQLite: exactly the file and its -wal/-shm are deleted;
PostgreSQL: postroom's own tables are emptied), still under the lock, or, with --keep,
adds to it; its supervisor checks again under its own lock (`demo_check`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from postroom_common import PostroomError
from storage import OwnerLock, Storage, open_database
from storage.database import sqlite_path
from storage.models import DEMO_KEY_PREFIX

__all__ = ["NotADemoDatabase", "demo_check", "demo_keys", "prepare"]

_SQLITE_FILES = ("", "-wal", "-shm")  # a SQLite database is these files, and nothing else


class NotADemoDatabase(PostroomError):
    """The database was not created by the demo, so the demo leaves it alone."""


def prepare(url: str, *, keep: bool) -> str:
    """Make `url` ready for a demo run and say what was done.

    Raises, having written nothing, `DatabaseLocked` while a supervisor runs on the
    database, and `NotADemoDatabase` for a database that is not the demo's alone.
    """
    if url.startswith("sqlite:"):
        return _prepare_sqlite(url, keep=keep)
    return _prepare_server(url, keep=keep)


def demo_check(url: str) -> Callable[[Storage], None]:
    """The check the demo's supervisor runs under its owner lock: `NotADemoDatabase` unless the
    database is still the demo's alone (nobody wrote to it since `prepare`)."""
    return lambda store: _require_demo_only(store, url)


def demo_keys() -> Callable[[int], str]:
    """Idempotency keys for one run's messages, by number: unique to the run, so that --keep
    adds new messages rather than finding the last run's."""
    run = uuid.uuid4().hex
    return lambda n: f"{DEMO_KEY_PREFIX}{run}:{n}"


def _prepare_sqlite(url: str, *, keep: bool) -> str:
    path = sqlite_path(url)
    if not path.exists():
        _create(url)
        return f"Created the demo database {path}."
    with _owned(url, create=False) as store:  # opening writes nothing to a file
        _require_demo_only(store, url)
        if keep:
            return f"Adding to the demo database {path} (--keep)."
        store.close()  # its connection goes before its files
        _delete_files(path)
        _create(url)
    return f"Started the demo database {path} afresh (--keep adds to it instead)."


def _prepare_server(url: str, *, keep: bool) -> str:
    name = _safe_name(url)
    with _owned(url, create=True) as store:
        if not store.has_schema():
            _create_in(store, url)
            return f"Created postroom's tables in {name} for the demo."
        _require_demo_only(store, url)
        if keep:
            return f"Adding to the demo database {name} (--keep)."
        with store.write_transaction():  # verifies first that the lock is still held
            store.empty_tables()
        return f"Emptied postroom's tables in the demo database {name} (--keep adds instead)."


@contextlib.contextmanager
def _owned(url: str, *, create: bool) -> Iterator[Storage]:
    """The database's storage, with its owner lock held throughout: `DatabaseLocked`, before
    anything is read, while a supervisor runs on it."""
    db = open_database(url, create=create)
    lock = OwnerLock(db)
    lock.acquire()
    try:
        store = Storage(db, owner=lock)
        try:
            yield store
        finally:
            store.close()  # before the lock: releasing it drops this process's SQLite locks
    finally:
        lock.release()


def _require_demo_only(store: Storage, url: str) -> None:
    if not store.is_demo():
        raise _refusal(url)
    foreign = store.not_from_demo()
    if foreign:
        raise _written_by_others(url, foreign)


def _create(url: str) -> None:
    store = Storage(open_database(url))
    try:
        _create_in(store, url)
    finally:
        store.close()


def _create_in(store: Storage, url: str) -> None:
    # Checked again inside the schema's transaction: a supervisor may have created the
    # schema since the first look, and its queue must not be marked as the demo's.
    if not store.create_demo_schema():
        raise _refusal(url)


def _delete_files(path: Path) -> None:
    for suffix in _SQLITE_FILES:
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _refusal(url: str) -> NotADemoDatabase:
    name = _safe_name(url)
    return NotADemoDatabase(
        f"{name} is not the demo's: it was not created by the demo, or a supervisor other than "
        f"the demo's has run on it since, so the demo will not touch it (it may hold a real "
        f"queue). {_elsewhere(url)}")


def _written_by_others(url: str, count: int) -> NotADemoDatabase:
    return NotADemoDatabase(
        f"{_safe_name(url)} holds {count} message(s) the demo did not write (a producer's or a "
        f"script's, or an older demo's), so the demo will not touch it. {_elsewhere(url)}")


def _elsewhere(url: str) -> str:
    name = _safe_name(url)
    sqlite = url.startswith("sqlite:")
    fresh = "a file that does not exist" if sqlite else "a database without postroom's tables"
    remove = "delete the file" if sqlite else "drop postroom's tables"
    return (f"Run the demo on a database of its own: leave out --database, or give --database "
            f"{fresh}. If nothing in {name} is needed, {remove} yourself.")


def _safe_name(url: str) -> str:
    """How messages name the database: a SQLite file by its path, a server URL without its password."""
    if url.startswith("sqlite:"):
        return str(sqlite_path(url))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))
