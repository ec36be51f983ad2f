"""The peewee model of the `message_queue` table: the schema's single definition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import peewee

from postroom_common.domain import OPEN_STATUSES

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(value: datetime) -> int:
    """UTC microseconds since the epoch; integers order and compare alike on every backend."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    """The inverse of `to_micros`, always timezone-aware (epoch + timedelta: twice as fast)."""
    return _EPOCH + timedelta(0, 0, value)  # positional: keywords cost every row read


class UtcTimestampField(peewee.BigIntegerField):
    """An aware datetime stored as UTC microseconds (no backend-specific date parsing)."""

    def db_value(self, value: Any) -> Any:
        return to_micros(value) if isinstance(value, datetime) else value

    def python_value(self, value: Any) -> Any:
        return from_micros(value) if value is not None else None


class Utf8TextField(peewee.BlobField):
    """Text stored as UTF-8 bytes so that any string, NUL included, round-trips exactly."""

    def db_value(self, value: Any) -> Any:
        return super().db_value(value.encode("utf-8")) if isinstance(value, str) else value

    def python_value(self, value: Any) -> Any:
        return bytes(value).decode("utf-8") if value is not None else None


class MessageRow(peewee.Model):
    """One outbound message; `id` doubles as the enqueue sequence (FIFO key)."""

    id = peewee.BigIntegerField(primary_key=True)
    phone = peewee.CharField(max_length=64)
    user_id = peewee.CharField(max_length=255)
    text = Utf8TextField()
    attachment = peewee.TextField(null=True)
    priority = peewee.SmallIntegerField()
    status = peewee.CharField(max_length=16)
    created_at = UtcTimestampField()
    scheduled_at = UtcTimestampField(null=True)
    available_at = UtcTimestampField()
    attempts = peewee.IntegerField(default=0)
    max_attempts = peewee.IntegerField()
    last_error = peewee.TextField(null=True)
    completed_at = UtcTimestampField(null=True)
    updated_at = UtcTimestampField()
    idempotency_key = peewee.CharField(max_length=255, null=True)
    # How many crashes in a row interrupted this message's attempts: recovery adds one, any
    # outcome, requeue or cancel sets 0. A default in the table too: inserts leave it out.
    interrupted = peewee.IntegerField(default=0, constraints=[peewee.SQL("DEFAULT 0")])
    # Claims of this message so far, given-back ones included: numbers its attempts' history.
    claims = peewee.IntegerField(default=0, constraints=[peewee.SQL("DEFAULT 0")])
    # When it was last claimed: the start of its last attempt (a message sent at its first
    # claim keeps no row in message_attempts: its one attempt is read from here).
    claimed_at = UtcTimestampField(null=True)
    # The epoch of its bucket under which it was last claimed: a node settles or gives back
    # only rows claimed under its own epoch or an older one, never another node's in flight.
    claim_epoch = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "message_queue"
        indexes = (
            # Every index costs each insert and status change a page write, and an insert
            # spread over many accounts dirties one page per account in each index keyed
            # by phone: so only one such index covers every row.
            (("status", "phone"), False),  # by status: boot (accounts with work), cleanup, stats
        )


class AccountRow(peewee.Model):
    """An account-wide pause (rate limit, suspension) that must survive a restart."""

    phone = peewee.CharField(max_length=64, primary_key=True)
    paused_until = UtcTimestampField(null=True)
    reason = peewee.TextField(null=True)
    updated_at = UtcTimestampField()

    class Meta:
        table_name = "account_state"


class MetaRow(peewee.Model):
    """Facts about the queue that no row of it may carry (one row per key)."""

    key = peewee.CharField(max_length=64, primary_key=True)
    value = peewee.BigIntegerField()

    class Meta:
        table_name = "postroom_meta"


class AttemptRow(peewee.Model):
    """One attempt of a message, written with its outcome; a message keeps its last
    `ATTEMPTS_KEPT` (the row of claim number n goes in slot n % ATTEMPTS_KEPT)."""

    message_id = peewee.BigIntegerField()
    slot = peewee.IntegerField()
    number = peewee.IntegerField()
    attempt = peewee.IntegerField()
    started_at = UtcTimestampField()
    ended_at = UtcTimestampField()
    outcome = peewee.CharField(max_length=16)
    error = peewee.TextField(null=True)

    class Meta:
        table_name = "message_attempts"
        primary_key = peewee.CompositeKey("message_id", "slot")


class ChangeRow(peewee.Model):
    """A change another process made (a producer, an operator's command), for the owner to
    notice: new or requeued rows (an id range), a cancel (one id), a pause set or lifted (a
    phone). A hint, never the truth: the owner reads the rows it names."""

    seq = peewee.BigAutoField(primary_key=True)
    kind = peewee.CharField(max_length=16)
    phone = peewee.CharField(max_length=64, null=True)
    first_id = peewee.BigIntegerField(null=True)
    last_id = peewee.BigIntegerField(null=True)
    at = UtcTimestampField()

    class Meta:
        table_name = "postroom_changes"


#: The PostgreSQL channel a process that changed the queue notifies; the owner listens on it.
CHANGES_CHANNEL = "postroom_changes"

#: Attempts of one message kept in its history (the oldest make room for the newest).
ATTEMPTS_KEPT = 20


class OwnerRow(peewee.Model):
    """Who owns a scope of the queue, and the epoch of that ownership (a fencing token).

    A supervisor that takes its owner lock bumps the epoch; every write transaction of an
    owner first reads the row (`FOR SHARE` on PostgreSQL) and writes nothing unless the
    epoch is still its own, so a former owner that lost its lock without noticing changes
    nothing once another has taken over. One scope, `WHOLE_DATABASE`, until several nodes
    share a database, each owning buckets of accounts.
    """

    scope = peewee.CharField(max_length=64, primary_key=True)
    epoch = peewee.BigIntegerField()
    holder = peewee.TextField()
    taken_at = UtcTimestampField()

    class Meta:
        table_name = "postroom_owner"


#: The scope of `OwnerRow` a single supervisor owns: every account of the database.
WHOLE_DATABASE = "database"


class NodeRow(peewee.Model):
    """A process that sends for the database (a node), and its lease on the database's clock.

    A node renews `lease_expires_at` while it lives; once it has passed, the buckets the node
    held may be taken by another. Each start of a process is a new row (a new id).
    """

    id = peewee.BigAutoField(primary_key=True)
    holder = peewee.TextField()
    joined_at = peewee.BigIntegerField()
    lease_expires_at = peewee.BigIntegerField()

    class Meta:
        table_name = "postroom_nodes"


class BucketRow(peewee.Model):
    """Which node owns a bucket of accounts (`postroom_common.buckets`), and the epoch of that
    ownership: bumped each time the bucket changes hands, read `FOR SHARE` by the owner's every
    claim, so that a former owner's claim commits before the takeover or not at all."""

    bucket = peewee.IntegerField(primary_key=True)
    node = peewee.BigIntegerField(null=True)
    epoch = peewee.BigIntegerField(default=0, constraints=[peewee.SQL("DEFAULT 0")])
    taken_at = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "postroom_buckets"


#: last_error of a message whose attempt a crash interrupted (until its next outcome).
INTERRUPTED = "interrupted: the process stopped while this attempt was in flight"
#: Crashes in a row (of its process or its account) a message may be in flight at: at the
#: last one it fails as poison, so that a message that kills whoever sends it cannot kill
#: node after node, nor the same node for each of its attempts.
POISON_AFTER = 3
#: last_error of a message failed as poison.
POISON = (f"poison: interrupted by {POISON_AFTER} crashes in a row while in flight, "
          "failed so as not to crash another sender")

#: postroom_meta key: the highest message id a deletion may have removed (SQLite, where
#: ids follow MAX(id): without it a restart after the newest rows were deleted would give
#: their ids again, and an old id would name a new message).
DELETED_UP_TO = "deleted_up_to"

#: postroom_meta key: present when `postroom demo` created this database. The demo touches
#: no database without it, so a real queue can never be emptied or sent by a demo; any other
#: supervisor removes it when it starts (`Storage.create_schema`).
CREATED_BY_DEMO = "created_by_demo"

#: How the idempotency key of every message `postroom demo` writes begins: a row without it
#: was written by someone else (a producer, a script), and the demo refuses its database.
DEMO_KEY_PREFIX = "postroom-demo:"


# Unique among the rows that have one: most rows have none, and a partial index costs them
# nothing on insert (a plain unique index stores every NULL too).
MessageRow.add_index(MessageRow.index(MessageRow.idempotency_key, unique=True,
                                      where=MessageRow.idempotency_key.is_null(False)))

#: The condition of an open row, spelled as a literal so that the planners of SQLite and
#: PostgreSQL can match a query to `open_by_account`: queries of open work repeat it verbatim.
OPEN_ROWS = "status IN ({})".format(", ".join(f"'{status.value}'" for status in sorted(OPEN_STATUSES)))

# An account's open work in send order, and nothing else: a row leaves it when it is claimed,
# so sent rows waiting for cleanup cost the hot path neither a page write nor a scan.
MessageRow.add_index(MessageRow.index(MessageRow.phone, MessageRow.priority, MessageRow.id,
                                      name="message_queue_open_by_account",
                                      where=peewee.SQL(OPEN_ROWS)))

#: The condition of a row in flight, literal for the same reason.
IN_FLIGHT = "status = 'processing'"

# One message in flight per account, whatever any process believes: the database refuses a
# second claim (a stale node's, a bug's) rather than let two sends of one account overlap.
MessageRow.add_index(MessageRow.index(MessageRow.phone, unique=True, name="message_queue_one_in_flight",
                                      where=peewee.SQL(IN_FLIGHT)))

#: Indexes of earlier versions that `open_by_account` replaced; dropped when the schema is
#: opened (each was written on every insert: 16 single enqueues to 16 accounts dirtied
#: 16 more pages per commit).
RETIRED_INDEXES = ("messagerow_phone_status", "messagerow_phone_priority_id")

MODELS: tuple[type[peewee.Model], ...] = (MessageRow, AccountRow, MetaRow, OwnerRow, AttemptRow, ChangeRow,
                                          NodeRow, BucketRow)
#: Every table of postroom's schema (what a test or a bench drops to start again).
TABLES: tuple[str, ...] = tuple(model._meta.table_name for model in MODELS)
