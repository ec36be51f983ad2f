"""The schema's keeper: one version number in the database and numbered migrations.

A database records the version of its schema in `postroom_meta` (`SCHEMA_VERSION_KEY`).
`migrate` brings it to `SCHEMA_VERSION`, in one transaction (on PostgreSQL under the schema
advisory lock, so two processes starting together never migrate twice): a database without
postroom's tables is created from the models as they are now; an older one runs each
migration after its version, in order. A database newer than this code is refused
(`SchemaMismatch`) and never written. Producers and read commands only `check` the version.

Each migration is written as plain SQL of its own time, never from today's models: a model
that gains a column later must not make an old migration create it early (an index on a
new column comes after the column, in the migration that adds it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import peewee

from postroom_common.domain import Status
from postroom_common.errors import SchemaMismatch
from storage.models import IN_FLIGHT, INTERRUPTED, RETIRED_INDEXES
from storage.owner import SCHEMA_LOCK_KEY

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SCHEMA_VERSION_KEY", "check", "migrate", "version_of"]

#: postroom_meta key: the version of the database's schema.
SCHEMA_VERSION_KEY = "schema_version"

_RUN_MIGRATE = "run `postroom migrate --database URL` (or start a supervisor, which migrates)"


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: from `version - 1` to `version`."""

    version: int
    """The version the database has once this has run."""
    summary: str
    """What it changes, for `postroom migrate`'s output."""
    apply: Callable[[peewee.Database, bool], None]
    """Runs the step inside the migration's transaction: (database, is SQLite)."""


def _v1_unversioned(db: peewee.Database, is_sqlite: bool) -> None:
    """The schema as postroom 0.1.0's code left it before versions existed: its earlier
    shapes brought to the last one (crash count, indexes, the id sequence)."""
    _add_crash_count(db, is_sqlite)
    for index in RETIRED_INDEXES:
        db.execute_sql(f"DROP INDEX IF EXISTS {index}")
    db.execute_sql("CREATE TABLE IF NOT EXISTS account_state (phone VARCHAR(64) NOT NULL PRIMARY KEY,"
                   " paused_until BIGINT, reason TEXT, updated_at BIGINT NOT NULL)")
    db.execute_sql("CREATE TABLE IF NOT EXISTS postroom_meta (key VARCHAR(64) NOT NULL PRIMARY KEY,"
                   " value BIGINT NOT NULL)")
    open_rows = "status IN ('pending', 'retrying')"
    db.execute_sql("CREATE INDEX IF NOT EXISTS messagerow_status_phone ON message_queue (status, phone)")
    db.execute_sql("CREATE UNIQUE INDEX IF NOT EXISTS messagerow_idempotency_key ON message_queue"
                   " (idempotency_key) WHERE idempotency_key IS NOT NULL")
    db.execute_sql("CREATE INDEX IF NOT EXISTS message_queue_open_by_account ON message_queue"
                   f" (phone, priority, id) WHERE {open_rows}")
    if not is_sqlite:
        # Once, here: a reset on every start could move the sequence back under a producer's
        # nextval. `is_called` false at 1 on an empty table: the first id is 1, as on SQLite.
        db.execute_sql("CREATE SEQUENCE IF NOT EXISTS message_queue_id_seq")
        db.execute_sql(
            "SELECT setval('message_queue_id_seq', GREATEST(top, 1), top > 0) FROM"
            " (SELECT GREATEST((SELECT COALESCE(MAX(id), 0) FROM message_queue),"
            " (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM message_queue_id_seq)) AS top) t")


def _add_crash_count(db: peewee.Database, is_sqlite: bool) -> None:
    """Add `interrupted` to a table older than it, counting one crash for each row whose run
    of crashes no outcome has ended (its last_error was the only sign)."""
    if not _add_column(db, "interrupted INTEGER NOT NULL DEFAULT 0"):
        return
    mark = "?" if is_sqlite else "%s"
    # A completed or cancelled row may still carry the text (COALESCE kept it): its run ended.
    db.execute_sql(f"UPDATE message_queue SET interrupted = 1 WHERE last_error = {mark}"
                   f" AND status NOT IN ({mark}, {mark})",
                   (INTERRUPTED, Status.COMPLETED.value, Status.CANCELLED.value))


def _add_column(db: peewee.Database, definition: str) -> bool:
    """Add a column to message_queue unless it has it (a migration may meet a table that an
    interrupted upgrade or a hand already changed); True if it was added."""
    # The columns as every query sees them (search_path included), the same on both backends.
    cursor = db.execute_sql("SELECT * FROM message_queue LIMIT 0")
    if definition.split()[0] in {column[0] for column in cursor.description}:
        return False
    db.execute_sql(f"ALTER TABLE message_queue ADD COLUMN {definition}")
    return True


def _v2_owner_epoch(db: peewee.Database, is_sqlite: bool) -> None:
    """The owner row whose epoch fences every write of a former owner."""
    db.execute_sql("CREATE TABLE IF NOT EXISTS postroom_owner (scope VARCHAR(64) NOT NULL PRIMARY KEY,"
                   " epoch BIGINT NOT NULL, holder TEXT NOT NULL, taken_at BIGINT NOT NULL)")


def _v3_attempt_history(db: peewee.Database, is_sqlite: bool) -> None:
    """Each attempt's start, end, outcome and error: the claim count first, then its table."""
    _add_column(db, "claims INTEGER NOT NULL DEFAULT 0")
    _add_column(db, "claimed_at BIGINT")
    db.execute_sql("CREATE TABLE IF NOT EXISTS message_attempts (message_id BIGINT NOT NULL,"
                   " slot INTEGER NOT NULL, number INTEGER NOT NULL, attempt INTEGER NOT NULL,"
                   " started_at BIGINT NOT NULL,"
                   " ended_at BIGINT NOT NULL, outcome VARCHAR(16) NOT NULL, error TEXT,"
                   " PRIMARY KEY (message_id, slot))")


def _v4_change_feed(db: peewee.Database, is_sqlite: bool) -> None:
    """What other processes changed (rows, cancels, requeues, pauses), for the owner to notice."""
    seq = "seq INTEGER NOT NULL PRIMARY KEY" if is_sqlite else "seq BIGSERIAL NOT NULL PRIMARY KEY"
    db.execute_sql(f"CREATE TABLE IF NOT EXISTS postroom_changes ({seq}, kind VARCHAR(16) NOT NULL,"
                   " phone VARCHAR(64), first_id BIGINT, last_id BIGINT, at BIGINT NOT NULL)")


def _v5_nodes(db: peewee.Database, is_sqlite: bool) -> None:
    """Nodes with leases, buckets with epochs, each claim's epoch, one row in flight per account."""
    node_id = "id INTEGER NOT NULL PRIMARY KEY" if is_sqlite else "id BIGSERIAL NOT NULL PRIMARY KEY"
    db.execute_sql(f"CREATE TABLE IF NOT EXISTS postroom_nodes ({node_id}, holder TEXT NOT NULL,"
                   " joined_at BIGINT NOT NULL, lease_expires_at BIGINT NOT NULL)")
    db.execute_sql("CREATE TABLE IF NOT EXISTS postroom_buckets (bucket INTEGER NOT NULL PRIMARY KEY,"
                   " node BIGINT, epoch BIGINT NOT NULL DEFAULT 0, taken_at BIGINT)")
    _add_column(db, "claim_epoch BIGINT")
    # A database older than the index may hold two rows in flight of one account (nothing
    # refused it): all but the oldest are given back, their attempt counted, as a crash would.
    mark = "?" if is_sqlite else "%s"
    db.execute_sql(
        f"UPDATE message_queue SET status = {mark}, last_error = {mark} WHERE {IN_FLIGHT}"
        f" AND id > (SELECT MIN(m.id) FROM message_queue m WHERE m.phone = message_queue.phone"
        f" AND m.{IN_FLIGHT})", (Status.RETRYING.value, INTERRUPTED))
    db.execute_sql("CREATE UNIQUE INDEX IF NOT EXISTS message_queue_one_in_flight ON message_queue"
                   f" (phone) WHERE {IN_FLIGHT}")


#: Every migration, in order; the last one's version is `SCHEMA_VERSION`.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the unversioned schema of postroom 0.1.0, brought to its last shape", _v1_unversioned),
    Migration(2, "postroom_owner: the owner's epoch that fences a former owner's writes", _v2_owner_epoch),
    Migration(3, "message_attempts: the history of each message's attempts", _v3_attempt_history),
    Migration(4, "postroom_changes: what other processes changed, for the owner to notice", _v4_change_feed),
    Migration(5, "postroom_nodes and postroom_buckets: nodes with leases, buckets with epochs, "
                 "one message in flight per account", _v5_nodes),
)
#: The version of the schema this code reads and writes.
SCHEMA_VERSION = MIGRATIONS[-1].version


def version_of(db: peewee.Database, is_sqlite: bool) -> int | None:
    """The database's schema version: None without postroom's queue table, 0 for a schema
    older than versions."""
    if not db.table_exists("message_queue"):
        return None
    if not db.table_exists("postroom_meta"):
        return 0
    mark = "?" if is_sqlite else "%s"
    row = db.execute_sql(f"SELECT value FROM postroom_meta WHERE key = {mark}",
                         (SCHEMA_VERSION_KEY,)).fetchone()
    return 0 if row is None else int(row[0])


def check(db: peewee.Database, is_sqlite: bool) -> None:
    """Refuse (`SchemaMismatch`) a database whose schema is not this code's, without writing."""
    _refuse(version_of(db, is_sqlite))


def _refuse(found: int | None) -> None:
    if found is None:
        raise SchemaMismatch(f"the database has no postroom schema: {_RUN_MIGRATE}")
    if found > SCHEMA_VERSION:
        raise SchemaMismatch(f"the database's schema is version {found}, newer than this postroom's "
                             f"{SCHEMA_VERSION}: upgrade postroom; nothing was written")
    if found < SCHEMA_VERSION:
        raise SchemaMismatch(f"the database's schema is version {found}, older than this postroom's "
                             f"{SCHEMA_VERSION}: {_RUN_MIGRATE}")


def migrate(db: peewee.Database, is_sqlite: bool,
            create: Callable[[], None]) -> tuple[int | None, Sequence[Migration]]:
    """Bring the schema to `SCHEMA_VERSION` inside the caller's transaction; `create` makes a
    new database's tables from today's models. (The version found, the migrations run.)"""
    if not is_sqlite:
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
    found = version_of(db, is_sqlite)
    if found is not None and found > SCHEMA_VERSION:
        _refuse(found)
    if found is None:
        create()
        steps: Sequence[Migration] = ()
    else:
        steps = [m for m in MIGRATIONS if m.version > found]
        for step in steps:
            step.apply(db, is_sqlite)
    if found != SCHEMA_VERSION:
        mark = "?" if is_sqlite else "%s"
        db.execute_sql(f"INSERT INTO postroom_meta (key, value) VALUES ({mark}, {mark})"
                       " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                       (SCHEMA_VERSION_KEY, SCHEMA_VERSION))
    return found, steps
