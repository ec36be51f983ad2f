"""What the SQL of `storage` needs beside its queries: the backends' differences, decided in
one place (`Dialect`), and lists of ids cut to fit one statement (`chunks`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

import peewee

from storage.models import DELETED_UP_TO

__all__ = ["ID_CHUNK", "Dialect", "chunks"]

ID_CHUNK = 500  # ids per IN (...) list, far below every backend's parameter limit

_T = TypeVar("_T")


def chunks(values: Sequence[_T]) -> Iterator[tuple[list[_T], str]]:
    """`values` in lists short enough for one IN (...) (PostgreSQL takes at most 65,535
    parameters), each with its `?` marks."""
    for start in range(0, len(values), ID_CHUNK):
        chunk = list(values[start:start + ID_CHUNK])
        yield chunk, ", ".join("?" * len(chunk))


class Dialect:
    """What differs between backends, decided in one place."""

    def __init__(self, db: peewee.Database) -> None:
        self.db = db
        self.is_sqlite = isinstance(db, peewee.SqliteDatabase)
        self.param = db.param

    def sql(self, text: str) -> str:
        return text.replace("?", self.param)

    def allocate_ids(self, count: int) -> list[int]:
        """Ids for new rows, increasing in enqueue order; called inside the write transaction.

        SQLite: read from the table each time, inside the transaction whose write lock keeps
        every other process's insert out until the commit (producers write to the file too:
        no counter is held in memory). PostgreSQL: the sequence.
        """
        if self.is_sqlite:
            (top,) = self.db.execute_sql(
                "SELECT MAX(COALESCE((SELECT MAX(id) FROM message_queue), 0),"
                " COALESCE((SELECT value FROM postroom_meta WHERE key = ?), 0))",
                (DELETED_UP_TO,)).fetchone()
            return list(range(int(top) + 1, int(top) + 1 + count))
        cursor = self.db.execute_sql(
            "SELECT nextval('message_queue_id_seq') FROM generate_series(1, %s)", (count,)
        )
        return [int(row[0]) for row in cursor.fetchall()]

    def before_delete(self) -> None:
        """Remember the highest id before rows go: SQLite's next id follows it, never a
        deleted one (PostgreSQL's sequence never goes back)."""
        if self.is_sqlite:
            self.db.execute_sql(
                "INSERT INTO postroom_meta (key, value)"
                " SELECT ?, COALESCE(MAX(id), 0) FROM message_queue WHERE true"
                " ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                (DELETED_UP_TO,))

    def lock_rows(self) -> str:
        return "" if self.is_sqlite else " FOR UPDATE"

    def like_any_case(self) -> str:
        """LIKE whatever the case (SQLite's LIKE already is, for ASCII)."""
        return "LIKE" if self.is_sqlite else "ILIKE"

    def position(self, column: str) -> str:
        """Where a `?` text first occurs in `column` (1 on), 0 if nowhere: exact, case and all,
        where LIKE would read `%` and `_` and ignore case on SQLite only."""
        return f"instr({column}, ?)" if self.is_sqlite else f"strpos({column}, ?)"

    def now_micros(self) -> str:
        """The database's clock, in UTC microseconds (leases are timed by it, never by a node's)."""
        if self.is_sqlite:
            return "CAST(ROUND((julianday('now') - 2440587.5) * 86400000000.0) AS INTEGER)"
        return "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint"

    def share_row(self) -> str:
        """Lock a row against updates until the commit (SQLite: the write lock does it)."""
        return "" if self.is_sqlite else " FOR SHARE"
