"""A real SQLite database with faults switched on and off at the statement level.

Nothing is mocked: statements run on SQLite, and the faults are SQLite's own
errors, either injected before a write statement reaches the driver (an I/O
error on the Nth write) or produced by SQLite itself (`max_page_count` for a
full disk, `query_only` for a read-only database).
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import peewee

_WRITES = ("INSERT", "UPDATE", "DELETE", "COMMIT")


class FaultySqliteDatabase(peewee.SqliteDatabase):
    """A peewee SqliteDatabase whose writes can be made to fail."""

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        super().__init__(path, pragmas={"journal_mode": "wal", "synchronous": "FULL",
                                        "busy_timeout": int(busy_timeout * 1000)},
                         timeout=busy_timeout, lock_type="IMMEDIATE")
        self._lock = threading.Lock()
        self._countdown: int | None = None
        self.page_limit: int | None = None
        self.read_only = False
        self.injected = 0

    def fail_nth_write(self, n: int) -> None:
        """The nth write statement from now raises a disk I/O error (once)."""
        with self._lock:
            self._countdown = n

    def cursor(self, named_cursor: Any = None) -> Any:
        return _Cursor(super().cursor(), self)

    def before(self, cursor: sqlite3.Cursor, sql: str) -> None:
        verb = sql.lstrip().split(" ", 1)[0].upper()
        if verb == "BEGIN":
            # Per-connection pragmas, re-applied at each transaction so a test can flip them.
            limit = self.page_limit if self.page_limit is not None else 1_073_741_823
            cursor.execute(f"PRAGMA max_page_count = {limit}")
            cursor.execute(f"PRAGMA query_only = {1 if self.read_only else 0}")
        if verb in _WRITES:
            with self._lock:
                if self._countdown is not None:
                    self._countdown -= 1
                    if self._countdown <= 0:
                        self._countdown = None
                        self.injected += 1
                        raise sqlite3.OperationalError("disk I/O error (injected)")


class _Cursor:
    def __init__(self, cursor: sqlite3.Cursor, db: FaultySqliteDatabase) -> None:
        self._cursor = cursor
        self._db = db

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._db.before(self._cursor, sql)
        return self._cursor.execute(sql, params)

    def executemany(self, sql: str, params: Any) -> Any:
        self._db.before(self._cursor, sql)
        return self._cursor.executemany(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)
