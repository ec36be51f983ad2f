"""One owner per database: the lock a supervisor holds from start to stop.

SQLite: an exclusive `flock` on the database file itself, through a descriptor held open
for the supervisor's lifetime. Every path that reaches the file (a symlink, a hard link,
`dir/../q.db`) reaches the same inode, and so the same lock; no other file is created.

PostgreSQL: a session advisory lock (`OWNER_LOCK_KEY`) held on a connection of its own,
not one of peewee's per-thread connections. A pooler in transaction mode (pgbouncer)
cannot keep a session lock: the supervisor must reach the server directly or through
session pooling.

The kernel (a file lock) or the server (a session lock, when its connection closes)
drops the lock when the process dies, SIGKILL included, so a restart after a crash never
finds a stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import threading
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import peewee

from postroom_common.errors import DatabaseLocked, OwnershipLost, StorageError

if TYPE_CHECKING:
    import psycopg

#: The session advisory lock a supervisor holds on its PostgreSQL database: the bytes of
#: "postroom" read as a big-endian 64-bit integer (0x706F7374726F6F6D).
OWNER_LOCK_KEY = int.from_bytes(b"postroom", "big")
#: The transaction advisory lock `Storage.create_schema` holds on PostgreSQL: "prschema".
SCHEMA_LOCK_KEY = int.from_bytes(b"prschema", "big")
#: The transaction advisory lock of a cleanup's chunk on PostgreSQL (one node cleans at a time).
CLEANUP_LOCK_KEY = int.from_bytes(b"prcleans", "big")

_ONE_SUPERVISOR = "postroom runs one supervisor per database"


class _Lock(Protocol):
    def acquire(self) -> None: ...
    def check(self) -> None: ...
    def verify(self) -> bool: ...
    def release(self) -> None: ...


class OwnerLock:
    """The lock that makes one supervisor the only owner of a database (see the module)."""

    def __init__(self, database: peewee.Database | None, *, shared: bool = False) -> None:
        self._lock = _SessionLock(database, shared=True) if shared and isinstance(
            database, peewee.PostgresqlDatabase) else _lock_for(database)

    def acquire(self) -> None:
        """Take the lock; `DatabaseLocked` if another supervisor holds it."""
        self._lock.acquire()

    def check(self) -> None:
        """After every commit, cheaply: `OwnershipLost` if the SQLite file at the path is no
        longer the one locked (deleted or replaced). Nothing on PostgreSQL, where asking
        costs a round trip (`verify`)."""
        self._lock.check()

    def verify(self) -> bool:
        """Whether the lock is still held, asking the database if need be: True if held all
        along; False if it had been lost (a PostgreSQL connection dropped) and is taken again,
        so that another owner may have written meanwhile. `DatabaseLocked` if another
        supervisor holds it now, `OwnershipLost` if the SQLite file was deleted or replaced."""
        return self._lock.verify()

    def release(self) -> None:
        """Let go of the lock. Call it only once every connection of the supervisor to the
        database is closed: on SQLite, closing a descriptor of the file drops every fcntl
        lock the process holds on it (POSIX), those of SQLite's connections included."""
        self._lock.release()


def _lock_for(database: peewee.Database | None) -> _Lock:
    if isinstance(database, peewee.SqliteDatabase):
        path = sqlite_file(database)
        return _NoLock() if path is None else _FileLock(path)
    if isinstance(database, peewee.PostgresqlDatabase):
        return _SessionLock(database)
    return _NoLock()  # an in-memory stand-in (bench) or a backend postroom does not know


def sqlite_file(database: peewee.SqliteDatabase) -> Path | None:
    """The absolute path of a SQLite database's file; None for an in-memory database."""
    name = str(database.database or "")
    if name.startswith("file:"):
        parts = urllib.parse.urlsplit(name)
        if "mode=memory" in parts.query:
            return None
        name = urllib.parse.unquote(parts.path)
    return None if name in ("", ":memory:") else Path(name).absolute()


class _NoLock:
    def acquire(self) -> None:
        pass

    def check(self) -> None:
        pass

    def verify(self) -> bool:
        return True

    def release(self) -> None:
        pass


#: (st_dev, st_ino) of each database file a `_FileLock` of this process holds, with the
#: descriptors that refused attempts opened on it: closing one while the owner runs would
#: drop its SQLite connections' fcntl locks, so they are closed when the owner releases.
_HELD: dict[tuple[int, int], list[int]] = {}
_HELD_GUARD = threading.Lock()


class _FileLock:
    """An flock on the database file, held through a descriptor opened on its path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._identity = (0, 0)

    def acquire(self) -> None:
        with _HELD_GUARD:
            if _path_identity(self.path) in _HELD:  # before opening: no descriptor to keep
                raise DatabaseLocked(self._held_here())
            fd, identity = self._open()
            if identity in _HELD:  # the path was switched to a held file meanwhile
                _HELD[identity].append(fd)
                raise DatabaseLocked(self._held_here())
            self._flock(fd, identity)

    def _flock(self, fd: int, identity: tuple[int, int]) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)  # no supervisor of this process has the file (checked above)
            if isinstance(exc, BlockingIOError):
                raise DatabaseLocked(self._held_elsewhere(identity)) from exc
            raise StorageError(f"cannot lock the database file {self.path}: {exc.strerror}") from exc
        _HELD[identity] = []
        self._fd, self._identity = fd, identity

    def _open(self) -> tuple[int, tuple[int, int]]:
        """A descriptor on the file and the file's identity (st_dev, st_ino)."""
        try:
            # Read-write: a file its user cannot write fails here, clearly, not at the first
            # enqueue. Created if missing, as SQLite would: an adopted peewee database's file
            # may not exist yet (open_database has made its own).
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open the database file {self.path}: {exc.strerror}") from exc
        try:
            return fd, _identity(os.fstat(fd))
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot read the database file {self.path}: {exc.strerror}") from exc

    def _held_here(self) -> str:
        return f"another supervisor in this process owns {self.path}: {_ONE_SUPERVISOR}"

    def _held_elsewhere(self, identity: tuple[int, int]) -> str:
        holder = _flock_holder(identity)
        by = f" (process {holder})" if holder is not None else ""
        return f"another supervisor{by} owns {self.path}: {_ONE_SUPERVISOR}"

    def check(self) -> None:
        if self._fd is None:
            return
        try:
            intact = (_identity(os.stat(self.path)) == self._identity
                      and os.fstat(self._fd).st_nlink > 0)
        except OSError:
            intact = False  # the path no longer reaches a file
        if not intact:
            raise OwnershipLost(
                f"the database file {self.path} was deleted or replaced while the supervisor was "
                "running: restart the supervisor (every write since is refused, none was acknowledged)")

    def verify(self) -> bool:
        self.check()
        return True

    def release(self) -> None:
        with _HELD_GUARD:
            if self._fd is None:
                return
            for fd in (self._fd, *_HELD.pop(self._identity, [])):
                os.close(fd)
            self._fd = None


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


def _path_identity(path: Path) -> tuple[int, int] | None:
    try:
        return _identity(os.stat(path))
    except OSError:
        return None  # opening it will say why


def _flock_holder(identity: tuple[int, int]) -> int | None:
    """The pid that holds an flock on the file, from /proc/locks (Linux); None if unknown."""
    return flock_holder(identity) or None


def flock_holder(identity: tuple[int, int]) -> int | None:
    """The pid holding an flock on the file of `identity` (st_dev, st_ino), read from
    /proc/locks without taking any lock: 0 when none does, None when it cannot be told
    (no /proc/locks: not Linux)."""
    device, inode = identity
    wanted = f"{os.major(device):02x}:{os.minor(device):02x}:{inode}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    with contextlib.suppress(ValueError, IndexError):
        for line in lines:
            fields = line.split()
            if "FLOCK" in fields and "->" not in fields and fields[5] == wanted:
                return int(fields[4])
    return 0


def file_identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at `path`; None if it cannot be read."""
    return _path_identity(path)


class _SessionLock:
    """`pg_try_advisory_lock(OWNER_LOCK_KEY)` on a dedicated connection, kept open; `shared`:
    its shared form, which every node of a database holds together (the nodes share it by
    buckets and leases) and which keeps an exclusive owner out, an older postroom included,
    as its exclusive lock keeps every node out."""

    def __init__(self, database: peewee.PostgresqlDatabase, *, shared: bool = False) -> None:
        self._params = connect_params(database)
        self._conn: psycopg.Connection[Any] | None = None
        self._shared = shared

    def acquire(self) -> None:
        conn = self._connect()
        try:
            if conn.info.server_version >= 140000:
                # A server that ends idle sessions would end this one, and the lock with it.
                _one(conn, "SELECT set_config('idle_session_timeout', '0', false)", ())
            take = "pg_try_advisory_lock_shared" if self._shared else "pg_try_advisory_lock"
            (taken,) = _one(conn, f"SELECT {take}(%s)", (OWNER_LOCK_KEY,))
            if not taken:
                raise DatabaseLocked(_holder_text(conn, self._shared))
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def check(self) -> None:
        pass

    def verify(self) -> bool:
        if self._conn is None:
            raise StorageError("the owner lock was never taken")
        try:
            (held,) = _one(self._conn, _OWN_LOCK_HELD, (OWNER_LOCK_KEY,))
            if held:
                return True
        except StorageError:
            if not (self._conn.broken or self._conn.closed):
                raise
            # The connection is gone, and the lock with it: take it again below.
        self._conn.close()
        self._conn = None
        self.acquire()
        return False

    def release(self) -> None:
        if self._conn is None:
            return
        import psycopg

        # Unlocked first, and answered: closing alone lets the server drop the lock a moment
        # later, when a supervisor started right after this one would already have been refused.
        unlock = "pg_advisory_unlock_shared" if self._shared else "pg_advisory_unlock"
        with contextlib.suppress(psycopg.Error):
            self._conn.execute(f"SELECT {unlock}(%s)", (OWNER_LOCK_KEY,))
        self._conn.close()  # a session's advisory locks go with it, whatever happened above
        self._conn = None

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            import psycopg
        except ImportError as exc:
            raise StorageError("the owner lock on PostgreSQL needs psycopg 3: "
                               "pip install 'postroom[postgres]'") from exc
        try:
            return psycopg.connect(**self._params, autocommit=True)
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to PostgreSQL to lock the database: {exc}") from exc


def holder_name(*, unique: bool = False) -> str:
    """How this process names itself as an owner (pg_stat_activity, the owner row); `unique`:
    with a random token, so that each supervisor's name is its own (a node's sessions are
    found by it: another node that takes its buckets ends them, `NodeQueries.take_buckets`)."""
    token = f" #{secrets.token_hex(4)}" if unique else ""
    # PostgreSQL keeps 63 bytes of an application_name: the token comes first, so it is kept.
    return f"postroom supervisor{token} pid {os.getpid()} on {socket.gethostname()}"[:63]


def connect_params(database: peewee.PostgresqlDatabase) -> dict[str, Any]:
    """psycopg's arguments for the database peewee connects to, named for pg_stat_activity
    (as the database's own connections are, if they are named)."""
    params = dict(database.connect_params)
    name = str(database.database)
    params.setdefault("conninfo" if name.startswith(("postgres://", "postgresql://")) else "dbname", name)
    params.setdefault("application_name", holder_name())
    return params


#: Bigint advisory locks appear in pg_locks split in two oids (classid: high half, objid: low).
_ADVISORY_KEY = "((l.classid::int8 << 32) | l.objid::int8) = %s AND l.objsubid = 1"
_THIS_DATABASE = "l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
_OWN_LOCK_HELD = (f"SELECT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
                  f" AND l.pid = pg_backend_pid() AND {_ADVISORY_KEY} AND {_THIS_DATABASE})")
_LOCK_HOLDER = (f"SELECT l.pid, a.application_name FROM pg_locks l LEFT JOIN pg_stat_activity a"
                f" ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND {_ADVISORY_KEY}"
                f" AND {_THIS_DATABASE}")


#: Who holds this database's owner lock now (rows of pid, application_name), the key its
#: parameter: what a read command asks to tell whether a supervisor runs.
LOCK_HOLDER_QUERY = _LOCK_HOLDER


def _one(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> tuple[Any, ...]:
    import psycopg

    try:
        row = conn.execute(sql, params).fetchone()
    except psycopg.Error as exc:
        raise StorageError(f"{type(exc).__name__}: {exc}") from exc
    assert row is not None  # each query answers one row
    return tuple(row)


def _holder_text(conn: psycopg.Connection[Any], shared: bool = False) -> str:
    """Who holds the lock, as far as pg_locks and pg_stat_activity tell (best effort)."""
    import psycopg

    if shared:
        return ("a supervisor owns this PostgreSQL database alone (started without "
                "SupervisorSettings.nodes, or an older postroom): nodes cannot send beside it; "
                "stop it, or start it as a node too")
    base = "another supervisor owns this PostgreSQL database"
    try:
        row = conn.execute(_LOCK_HOLDER, (OWNER_LOCK_KEY,)).fetchone()
    except psycopg.Error:
        return f"{base}: {_ONE_SUPERVISOR}"
    if row is None:
        return f"{base} (it has just let go: try again): {_ONE_SUPERVISOR}"
    pid, application = row
    named = f", {application!r}" if application else ""
    return f"{base} (its lock session is server process pid {pid}{named}): {_ONE_SUPERVISOR}"
