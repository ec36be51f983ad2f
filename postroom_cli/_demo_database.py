"""The demo's own database: `postroom demo` touches no database it did not create.

The demo marks what it creates (`Storage.mark_demo`): a SQLite file that did not
exist, or a PostgreSQL database with none of postroom's tables. Any other database
is refused before anything is written, with or without --keep. On a marked one the
demo starts afresh (SQLite: exactly the file and its -wal/-shm are deleted, only while
no supervisor holds it; PostgreSQL: postroom's own tables are emptied) or, with
--keep, adds to it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from postroom_common import PostroomError
from storage import OwnerLock, Storage, open_database
from storage.database import sqlite_path

__all__ = ["NotADemoDatabase", "prepare"]

_SQLITE_FILES = ("", "-wal", "-shm")  # a SQLite database is these files, and nothing else


class NotADemoDatabase(PostroomError):
    """The database was not created by the demo, so the demo leaves it alone."""


def prepare(url: str, *, keep: bool) -> str:
    """Make `url` ready for a demo run and say what was done.

    Raises `NotADemoDatabase` (having written nothing) for a database the demo did not
    create, and `DatabaseLocked` when starting afresh a file a supervisor holds.
    """
    if url.startswith("sqlite:"):
        return _prepare_sqlite(url, keep=keep)
    return _prepare_server(url, keep=keep)


def _prepare_sqlite(url: str, *, keep: bool) -> str:
    path = sqlite_path(url)
    if not path.exists():
        _create(url)
        return f"Created the demo database {path}."
    _require_mark(url)
    if keep:
        return f"Adding to the demo database {path} (--keep)."
    lock = OwnerLock(open_database(url, create=False))
    lock.acquire()  # DatabaseLocked while a supervisor runs on it: then nothing is deleted
    try:
        _delete_files(path)
        _create(url)
    finally:
        lock.release()
    return f"Started the demo database {path} afresh (--keep adds to it instead)."


def _prepare_server(url: str, *, keep: bool) -> str:
    name = _safe_name(url)
    store = Storage(open_database(url))
    try:
        if not store.has_schema():
            _create_in(store, url)
            return f"Created postroom's tables in {name} for the demo."
        if not store.is_demo():
            raise _refusal(url)
        if keep:
            return f"Adding to the demo database {name} (--keep)."
        with store.write_transaction():
            store.empty_tables()
        return f"Emptied postroom's tables in the demo database {name} (--keep adds instead)."
    finally:
        store.close()


def _require_mark(url: str) -> None:
    store = Storage(open_database(url, create=False))  # opening writes nothing to a file
    try:
        if not store.is_demo():
            raise _refusal(url)
    finally:
        store.close()


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
    sqlite = url.startswith("sqlite:")
    fresh = "a file that does not exist" if sqlite else "a database without postroom's tables"
    remove = "delete the file" if sqlite else "drop postroom's tables"
    return NotADemoDatabase(
        f"{name} was not created by the demo, so the demo will not touch it (it may hold a real "
        f"queue). Run the demo on a database of its own: leave out --database, or give "
        f"--database {fresh}. If {name} is an old demo's, {remove} yourself.")


def _safe_name(url: str) -> str:
    """How messages name the database: a SQLite file by its path, a server URL without its password."""
    if url.startswith("sqlite:"):
        return str(sqlite_path(url))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))
