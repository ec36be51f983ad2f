"""Opening a database from a URL, with the settings postroom's guarantees depend on."""

from __future__ import annotations

import logging
import math
import os
import stat
import urllib.parse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import peewee
from playhouse import db_url

from postroom_common.checks import check_seconds
from postroom_common.errors import DatabaseNotFound, StorageError, ValidationError
from postroom_common.logs import get_logger
from storage._watch import CallLimits, watched_cursor
from storage.owner import OwnerLock

__all__ = [
    "SQLITE_SYNCHRONOUS",
    "OwnerLock",
    "PostgresSettings",
    "SqliteSettings",
    "is_postgres",
    "open_database",
    "sqlite_path",
]

log = get_logger("postroom.storage")

#: SQLite `synchronous` levels that still survive a power cut in WAL mode ("NORMAL" may
#: lose the last commits on power loss but never corrupts; "OFF" is refused).
SQLITE_SYNCHRONOUS = ("FULL", "EXTRA", "NORMAL")

_SQLITE_PREFIX = "sqlite:///"
_SLASHES = ("three slashes before a path relative to the working directory, four before an "
            "absolute one (sqlite:////var/lib/postroom/postroom.db)")


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """How postroom opens a SQLite file."""

    synchronous: str = "FULL"
    """FULL by default: an acknowledged message survives a power cut."""
    busy_timeout: float = 5.0
    """Seconds a writer waits for another process's lock before failing."""

    def __post_init__(self) -> None:
        # SQLite takes it in milliseconds, as a 32-bit int.
        check_seconds("SqliteSettings.busy_timeout", self.busy_timeout, maximum=(2**31 - 1) / 1000)


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """How long a PostgreSQL database may keep postroom waiting, on every connection postroom
    opens to it (each runtime thread's, and the owner lock's): past these, the call fails
    with StorageError instead of hanging. Parameters the URL sets itself win
    (`?connect_timeout=10`, `?options=-c%20lock_timeout%3D0`), and so do `PGCONNECT_TIMEOUT`
    and `PGOPTIONS`."""

    connect_timeout: float = 5.0
    """Seconds to open a connection (libpq counts whole seconds, at least 2)."""
    statement_timeout: float | None = 30.0
    """Seconds the server gives one statement before cancelling it. A statement still without
    an answer `connect_timeout` after that (a server or network path that hangs) has its
    connection closed by postroom. None: no limit, on either side."""
    lock_timeout: float | None = 5.0
    """Seconds a statement waits for a lock another session holds (a `LOCK TABLE`, a long
    transaction) before it fails; None: as long as `statement_timeout` allows."""
    idle_in_transaction_timeout: float | None = 10.0
    """Seconds the server lets a session sit idle inside a transaction before it ends the
    session, its transaction and its locks: a process paused mid-transaction (SIGSTOP, a swap
    storm, a debugger) never holds the rows other nodes and producers wait for longer. postroom
    runs a transaction's statements back to back; None: no limit."""
    keepalives_idle: float = 10.0
    """Seconds of silence on a connection before TCP keepalive probes begin."""
    keepalives_interval: float = 5.0
    """Seconds between two probes."""
    keepalives_count: int = 3
    """Unanswered probes after which the connection is dead."""
    tcp_user_timeout: float = 15.0
    """Seconds data sent may stay unacknowledged before the connection is dropped (Linux)."""

    def __post_init__(self) -> None:
        for setting in fields(self):
            value = getattr(self, setting.name)
            if value is None and setting.name in ("statement_timeout", "lock_timeout",
                                                  "idle_in_transaction_timeout"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value <= 0:
                raise ValidationError(f"PostgresSettings.{setting.name} must be a number of "
                                      f"seconds above 0, not {value!r}")

    @property
    def answer_within(self) -> float | None:
        """Seconds after which a statement still unanswered is cut on postroom's side."""
        return None if self.statement_timeout is None else self.statement_timeout + self.connect_timeout

    def libpq_params(self) -> dict[str, int]:
        """The libpq connection parameters these settings are."""
        return {"connect_timeout": max(2, math.ceil(self.connect_timeout)), "keepalives": 1,
                "keepalives_idle": math.ceil(self.keepalives_idle),
                "keepalives_interval": math.ceil(self.keepalives_interval),
                "keepalives_count": self.keepalives_count,
                "tcp_user_timeout": _millis(self.tcp_user_timeout)}

    def server_options(self) -> list[str]:
        """The `-c name=value` options that set the server's timeouts for the session."""
        timeouts = {"statement_timeout": self.statement_timeout, "lock_timeout": self.lock_timeout,
                    "idle_in_transaction_session_timeout": self.idle_in_transaction_timeout}
        return [f"-c {name}={_millis(value)}" for name, value in timeouts.items() if value is not None]


def is_postgres(db: peewee.Database) -> bool:
    """Whether `open_database` opened a PostgreSQL database."""
    return isinstance(db, peewee.PostgresqlDatabase)


def _millis(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _quiet_peewee_sql_logging() -> None:
    # peewee logs every statement with its parameters (phone numbers, texts) at DEBUG;
    # those records must never reach the host's handlers, whatever level it sets.
    logging.getLogger("peewee").addFilter(lambda record: record.levelno > logging.DEBUG)


_quiet_peewee_sql_logging()


def open_database(url_or_db: str | peewee.Database, sqlite: SqliteSettings | None = None, *,
                  create: bool = True, read_only: bool = False,
                  postgres: PostgresSettings | None = None,
                  application_name: str | None = None) -> peewee.Database:
    """Open `sqlite:///path.db` or `postgresql://user@host/db`, or adopt a peewee Database
    (as it is: its connections get none of `sqlite`'s or `postgres`'s settings).

    `create=False`: a SQLite file must exist (else `DatabaseNotFound`) and is opened as it
    is, neither created nor switched to WAL, so opening it writes nothing (`postroom resume`,
    the demo's look at a file). `read_only`: nothing is created or changed, not even a SQLite
    file's journal mode or WAL (`postroom status`); a write fails with StorageError.
    `application_name`: PostgreSQL names every connection so (unless the URL names them).
    """
    if isinstance(url_or_db, peewee.Database):
        return url_or_db
    settings = sqlite or SqliteSettings()
    if url_or_db.startswith("sqlite:"):
        return _open_sqlite(url_or_db, settings, create=create and not read_only, read_only=read_only)
    if url_or_db.startswith(("postgres://", "postgresql://")):
        return _open_postgres(url_or_db, postgres or PostgresSettings(), read_only=read_only,
                              application_name=application_name)
    raise ValidationError(_not_a_url(url_or_db))


def _open_postgres(url: str, settings: PostgresSettings, *, read_only: bool,
                   application_name: str | None) -> peewee.Database:
    given = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True))
    if "PGCONNECT_TIMEOUT" in os.environ:
        given.setdefault("connect_timeout", os.environ["PGCONNECT_TIMEOUT"])
    params: dict[str, Any] = {k: v for k, v in settings.libpq_params().items() if k not in given}
    if application_name is not None and "application_name" not in given:
        params["application_name"] = application_name
    # Of two -c for one setting the later wins: the URL's and PGOPTIONS come after postroom's.
    options = [*settings.server_options(), "-c default_transaction_read_only=on" if read_only else "",
               os.environ.get("PGOPTIONS", ""), given.get("options", "")]
    params["options"] = " ".join(option for option in options if option)
    cursor = watched_cursor(CallLimits(settings.answer_within))
    if cursor is not None and hasattr(peewee.PostgresqlDatabase, "psycopg3_adapter"):
        # psycopg 3 even where psycopg2 is installed too: the cursors are psycopg 3's. (Without
        # psycopg 3 the first connection says so; a peewee without it gets libpq's limits only.)
        params.update(cursor_factory=cursor, prefer_psycopg3=True)
    database: peewee.Database = db_url.connect(url, autoconnect=True, **params)
    return database


def _not_a_url(text: str) -> str:
    scheme, colon, rest = text.partition(":")
    if colon and rest.startswith("//") and "/" not in scheme:
        return (f"unsupported database URL scheme {scheme!r}: postroom opens "
                "sqlite:///path/to/postroom.db and postgresql://user@host/dbname")
    return f"{text!r} is not a database URL: for a SQLite file write sqlite:///{text} ({_SLASHES})"


def _open_sqlite(url: str, settings: SqliteSettings, *, create: bool,
                 read_only: bool) -> peewee.SqliteDatabase:
    if settings.synchronous.upper() not in SQLITE_SYNCHRONOUS:
        raise ValidationError(f"synchronous must be one of {SQLITE_SYNCHRONOUS}")
    # Absolute now: every connection, opened later in any thread, reaches the same file.
    path = sqlite_path(url).absolute()
    if not create and not path.is_file():
        raise DatabaseNotFound(f"no database at {path}")
    if read_only:
        return _open_sqlite_reader(path, settings)
    pragmas: dict[str, str | int] = {"synchronous": settings.synchronous.upper(),
                                     "busy_timeout": int(settings.busy_timeout * 1000),
                                     # Each runtime thread keeps a connection of its own,
                                     # and a commit on one empties the others' caches: a
                                     # smaller cache each (KiB) keeps their sum at what
                                     # SQLite's default gives a few connections.
                                     "cache_size": -1000}
    if create:
        _create_private_file(path)
        pragmas = {"journal_mode": "wal", **pragmas}
    return peewee.SqliteDatabase(
        _file_uri(path, mode="rw"),  # "rw", not "rwc": a connection never creates a missing file
        uri=True,
        pragmas=pragmas,
        timeout=settings.busy_timeout,
        lock_type="IMMEDIATE",  # writers take the write lock at BEGIN, never mid-transaction
        check_same_thread=False,  # each thread uses its own; `Storage.close_all` closes them all at stop
    )


def _open_sqlite_reader(path: Path, settings: SqliteSettings) -> peewee.SqliteDatabase:
    # No journal_mode pragma: it would turn a rollback-journal database into a WAL one. A
    # read-only connection never checkpoints, so a crashed writer's WAL stays as it is.
    query = {"mode": "ro"}
    if not os.access(path.parent, os.W_OK) and not Path(f"{path}-wal").exists():
        # SQLite cannot make a WAL database's -shm index in a directory it may not write. With
        # no -wal the file holds every commit and no writer has it open (one would have made
        # the -wal), so it is read as immutable; a writer starting meanwhile could make the
        # counts wrong, which a status display accepts.
        query["immutable"] = "1"
    return peewee.SqliteDatabase(_file_uri(path, **query), uri=True,
                                 pragmas={"busy_timeout": int(settings.busy_timeout * 1000)},
                                 timeout=settings.busy_timeout, check_same_thread=False)


def _file_uri(path: Path, **query: str) -> str:
    """An SQLite `file:` URI (percent-encoded, so any file name is safe) with its options."""
    return f"{path.as_uri()}?{urllib.parse.urlencode(query)}"


def sqlite_path(url: str) -> Path:
    """The file path of a `sqlite:///relative.db` or `sqlite:////absolute.db` URL."""
    if not url.startswith(_SQLITE_PREFIX):
        rest = url.removeprefix("sqlite:").lstrip("/")
        raise ValidationError(f"{url!r}: write sqlite:///{rest} ({_SLASHES})" if rest
                              else "postroom needs a SQLite file: sqlite:///path/to/postroom.db")
    path = url[len(_SQLITE_PREFIX):]
    if not path or path == ":memory:":
        raise ValidationError("postroom needs a SQLite file: sqlite:///path/to/postroom.db")
    return Path(path)


def _create_private_file(path: Path) -> None:
    """Create a missing database file 0600 (SQLite gives its -wal and -shm the same mode) in
    directories made 0700; warn about an existing file others may read, and leave it so.

    An existing file is never opened here: closing a descriptor of it would drop the fcntl
    locks that this process's SQLite connections hold on it (POSIX).
    """
    try:
        _make_private_directories(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        _warn_if_shared(path)
        return
    except OSError as exc:
        raise StorageError(f"cannot create the database file {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)  # the umask may have narrowed it
    finally:
        os.close(fd)


def _make_private_directories(directory: Path) -> None:
    """`mkdir -p`, each directory made here 0700 whatever the umask."""
    missing: list[Path] = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for made in reversed(missing):
        try:
            made.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs to set
        # chmod after mkdir (through the directory itself, never a symlink put in its place):
        # the umask applied to mkdir may have widened or narrowed it.
        fd = os.open(made, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)


def _warn_if_shared(path: Path) -> None:
    try:
        status = os.stat(path)
    except OSError as exc:
        raise StorageError(f"cannot open the database file {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(status.st_mode):
        raise StorageError(f"the database path {path} is not a regular file")
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        log.warning("storage.file_permissions", path=str(path), mode=f"{mode:04o}",
                    advice="other users may read the queue: chmod 600 the file, its -wal and -shm")
