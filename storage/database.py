"""Opening a database from a URL, with the settings postroom's guarantees depend on."""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote, unquote

import peewee
from playhouse import db_url

from storage.errors import DatabaseLocked, DatabaseNotFound, ValidationError

#: SQLite `synchronous` levels that still survive a power cut in WAL mode ("NORMAL" may
#: lose the last commits on power loss but never corrupts; "OFF" is refused).
SQLITE_SYNCHRONOUS = ("FULL", "EXTRA", "NORMAL")
_URI_PREFIX = "file:"


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """How postroom opens a SQLite file."""

    synchronous: str = "FULL"
    """FULL by default: an acknowledged message survives a power cut."""
    busy_timeout: float = 5.0
    """Seconds a writer waits for another process's lock before failing."""


def _quiet_peewee_sql_logging() -> None:
    # peewee logs every statement with its parameters (phone numbers, texts) at DEBUG;
    # those records must never reach the host's handlers, whatever level it sets.
    logging.getLogger("peewee").addFilter(lambda record: record.levelno > logging.DEBUG)


_quiet_peewee_sql_logging()


def open_database(
    url_or_db: str | peewee.Database, sqlite: SqliteSettings | None = None, *, create: bool = True
) -> peewee.Database:
    """Open `sqlite:///path.db` or `postgresql://user@host/db`, or adopt a peewee Database.

    With `create=False` a SQLite file must exist (else `DatabaseNotFound`) and is opened
    as it is: neither created nor switched to WAL, so opening it writes nothing.
    """
    if isinstance(url_or_db, peewee.Database):
        return url_or_db
    settings = sqlite or SqliteSettings()
    if url_or_db.startswith("sqlite:"):
        return _open_sqlite(url_or_db, settings) if create else _open_existing_sqlite(url_or_db, settings)
    if url_or_db.startswith(("postgres://", "postgresql://")):
        database: peewee.Database = db_url.connect(url_or_db, autoconnect=True)
        return database
    raise ValidationError(f"unsupported database URL scheme: {url_or_db.split(':', 1)[0]!r}")


def _open_sqlite(url: str, settings: SqliteSettings) -> peewee.SqliteDatabase:
    pragmas = _sqlite_pragmas(settings)
    path = sqlite_path(url)
    _create_private_file(path)
    return peewee.SqliteDatabase(
        str(path),
        pragmas={"journal_mode": "wal", **pragmas},
        timeout=settings.busy_timeout,
        lock_type="IMMEDIATE",  # writers take the write lock at BEGIN, never mid-transaction
    )


def _open_existing_sqlite(url: str, settings: SqliteSettings) -> peewee.SqliteDatabase:
    pragmas = _sqlite_pragmas(settings)
    path = sqlite_path(url)
    if not path.is_file():
        raise DatabaseNotFound(f"no database at {path}")
    # mode=rw: a file removed since the check is an error, not a new empty database.
    return peewee.SqliteDatabase(f"{_URI_PREFIX}{quote(str(path))}?mode=rw", uri=True, pragmas=pragmas,
                                 timeout=settings.busy_timeout, lock_type="IMMEDIATE")


def _sqlite_pragmas(settings: SqliteSettings) -> dict[str, str | int]:
    if settings.synchronous.upper() not in SQLITE_SYNCHRONOUS:
        raise ValidationError(f"synchronous must be one of {SQLITE_SYNCHRONOUS}")
    return {"synchronous": settings.synchronous.upper(),
            "busy_timeout": int(settings.busy_timeout * 1000)}


def _sqlite_file(database: peewee.Database) -> Path | None:
    """The file of a SQLite database, opened by path or by `file:` URI; None for others."""
    if not isinstance(database, peewee.SqliteDatabase) or database.database == ":memory:":
        return None
    name = str(database.database)
    if name.startswith(_URI_PREFIX):
        return Path(unquote(name.removeprefix(_URI_PREFIX).split("?", 1)[0]))
    return Path(name)


def sqlite_path(url: str) -> Path:
    """The file path of a `sqlite:///relative.db` or `sqlite:////absolute.db` URL."""
    path = url.split("://", 1)[1][1:] if "://" in url else ""
    if not path or path == ":memory:":
        raise ValidationError("postroom needs a SQLite file: sqlite:///path/to/postroom.db")
    return Path(path)


def _create_private_file(path: Path) -> None:
    # SQLite gives its -wal and -shm files the mode of the database file: 0600 for all.
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))


class OwnerLock:
    """An exclusive lock on `<db>.lock`: one supervisor process per SQLite file.

    The kernel releases it when the process dies, SIGKILL included, so a restart
    after a crash never finds a stale lock.
    """

    def __init__(self, database: peewee.Database) -> None:
        self._file: IO[bytes] | None = None
        file = _sqlite_file(database)
        self._path = None if file is None else file.with_name(file.name + ".lock")

    def acquire(self) -> None:
        if self._path is None:
            return
        handle = open(self._path, "ab")  # noqa: SIM115 - held open for the lock's lifetime
        os.chmod(self._path, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise DatabaseLocked(f"{self._path.name} is held by another supervisor") from exc
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
