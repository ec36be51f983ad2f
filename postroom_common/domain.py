"""Domain values that every layer shares: statuses, priorities, messages.

Frozen and free of peewee, so actors and users never hold a database row.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, overload


class Priority(enum.IntEnum):
    """Send order among due messages of one account; lower value goes first."""

    HIGH = 0  # alerts, replies a user is waiting for
    NORMAL = 1  # the default
    LOW = 2  # broadcasts, digests


class Status(enum.StrEnum):
    """Where a message is in its life; every change is written to the database."""

    PENDING = "pending"  # accepted, never attempted (or its attempt was given back)
    PROCESSING = "processing"  # claimed: handed, or about to be handed, to the sender
    COMPLETED = "completed"  # the sender returned
    RETRYING = "retrying"  # an attempt failed; waits for its backoff to elapse
    FAILED = "failed"  # permanent error, attempts exhausted, or interrupted (at-most-once)
    CANCELLED = "cancelled"  # cancelled by a user before it was sent


#: Statuses that still have work to do; an account actor owns these.
OPEN_STATUSES = frozenset({Status.PENDING, Status.RETRYING})
#: Statuses that never change again (except FAILED, which a user may requeue).
FINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})


class Delivery(enum.StrEnum):
    """What happens to a message that was `processing` when the process died."""

    AT_LEAST_ONCE = "at_least_once"  # send it again; the interrupted attempt counts
    AT_MOST_ONCE = "at_most_once"  # mark it failed as interrupted; never resend


class NewMessage(NamedTuple):
    """A validated message not yet written; the persistence actor inserts it.

    Immutable as a tuple rather than a frozen dataclass: an `EnqueueBatch` builds one per
    message, and a frozen dataclass sets each field through `object.__setattr__`, far
    slower than building the tuple.
    """

    phone: str
    """Sending account."""
    user_id: str
    """Recipient, in the sender's own terms."""
    text: str
    """Body; may be empty when there is an attachment."""
    attachment: str | None
    """An opaque reference the sender understands (file id, URL, path)."""
    priority: Priority
    """Send order among due messages of the account."""
    created_at: datetime
    """When it was accepted (UTC)."""
    scheduled_at: datetime | None
    """Not sent before this instant (UTC); None means now."""
    max_attempts: int
    """Attempts before it ends failed."""
    idempotency_key: str | None
    """A repeated key answers the first message's id and writes nothing."""

    def same_payload(self, other: NewMessage | Message) -> bool:
        """True when `other` carries what this would have written (idempotent replay)."""
        return (
            self.phone,
            self.user_id,
            self.text,
            self.attachment,
            self.priority,
            self.scheduled_at,
            self.max_attempts,
        ) == (
            other.phone,
            other.user_id,
            other.text,
            other.attachment,
            other.priority,
            other.scheduled_at,
            other.max_attempts,
        )

    def as_pending(self, message_id: int) -> Message:
        """The row `Storage.insert` wrote for this message under `message_id`."""
        return Message(
            id=message_id, phone=self.phone, user_id=self.user_id, text=self.text,
            attachment=self.attachment, priority=self.priority, status=Status.PENDING,
            created_at=self.created_at, scheduled_at=self.scheduled_at,
            available_at=self.scheduled_at or self.created_at, attempts=0,
            max_attempts=self.max_attempts, last_error=None, completed_at=None,
            updated_at=self.created_at, idempotency_key=self.idempotency_key,
        )


class NewBroadcast(Sequence[NewMessage]):
    """A validated broadcast: one message to many (phone, user_id) recipients.

    A sequence of `NewMessage`s, built only when asked for one: `Storage.insert` writes
    a broadcast's rows straight from its shared fields and its recipients, without an
    object per recipient.
    """

    __slots__ = ("recipients", "template")

    def __init__(self, template: NewMessage, recipients: Sequence[tuple[str, str]]) -> None:
        self.template = template
        """The shared fields; its phone and user_id are unused, its key is the prefix of each
        recipient's key (`f"{key}:{position}"`)."""
        self.recipients = recipients
        """(phone, user_id) per message, in send order."""

    def __len__(self) -> int:
        return len(self.recipients)

    @overload
    def __getitem__(self, position: int) -> NewMessage: ...

    @overload
    def __getitem__(self, position: slice) -> list[NewMessage]: ...

    def __getitem__(self, position: int | slice) -> NewMessage | list[NewMessage]:
        if isinstance(position, slice):
            return [self[k] for k in range(*position.indices(len(self)))]
        position = range(len(self))[position]  # negative positions, and IndexError past the end
        phone, user_id = self.recipients[position]
        t = self.template
        return NewMessage(phone, user_id, t.text, t.attachment, t.priority, t.created_at,
                          t.scheduled_at, t.max_attempts,
                          None if t.idempotency_key is None else f"{t.idempotency_key}:{position}")


@dataclass(frozen=True, slots=True)
class Message:
    """One row of the queue, as the database last recorded it."""

    id: int
    """Unique and increasing in enqueue order: the FIFO key within a priority."""
    phone: str
    """Sending account."""
    user_id: str
    """Recipient."""
    text: str
    """Body."""
    attachment: str | None
    """Opaque attachment reference."""
    priority: Priority
    """Send order among due messages of the account."""
    status: Status
    """Where it is in its life."""
    created_at: datetime
    """When it was accepted."""
    scheduled_at: datetime | None
    """The user's schedule; None means as soon as possible."""
    available_at: datetime
    """Earliest instant of the next attempt (schedule, backoff or rate-limit pause)."""
    attempts: int
    """Attempts claimed so far, including one in flight."""
    max_attempts: int
    """Attempts before it ends failed."""
    last_error: str | None
    """What the last failed attempt reported."""
    completed_at: datetime | None
    """When it reached a final status."""
    updated_at: datetime
    """Last status change."""
    idempotency_key: str | None = field(default=None)
    """The user's deduplication key, if any."""
    history: tuple[Attempt, ...] = field(default=(), compare=False)
    """Its last attempts, oldest first (`GetMessage` and `Storage.get` only; empty elsewhere)."""

    @property
    def order_key(self) -> tuple[int, int]:
        """Send order among due messages: priority, then enqueue order."""
        return (int(self.priority), self.id)


class Outcome(enum.StrEnum):
    """How one attempt ended, as its history records it."""

    COMPLETED = "completed"  # the sender returned
    RETRYING = "retrying"  # a transient failure: tried again after a backoff
    FAILED = "failed"  # a permanent failure, or the last attempt failed
    PAUSED = "paused"  # rate limited or suspended: the attempt was given back, the account paused
    INTERRUPTED = "interrupted"  # the process stopped while it was in flight


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a message: a send handed to the sender and how it ended."""

    number: int
    """Its place among the message's claims (1 for the first), counting given-back ones."""
    attempt: int
    """The attempt number it counted as (a given-back attempt repeats the number)."""
    started_at: datetime
    """When it was claimed; the send began right after that commit."""
    ended_at: datetime
    """When its outcome was recorded."""
    outcome: Outcome
    """How it ended."""
    error: str | None
    """What the sender raised, redacted as `last_error` is."""


class ChangeKind(enum.StrEnum):
    """What another process changed, as the change feed tells the owner."""

    INSERTED = "inserted"  # new rows, ids first_id ... last_id (others' ids may fall between)
    REQUEUED = "requeued"  # failed rows back to pending, ids first_id ... last_id
    CANCELLED = "cancelled"  # rows cancelled, ids first_id ... last_id
    PAUSED = "paused"  # the account's pause was set or lifted: read it again
    BUCKETS = "buckets"  # a node let buckets go (a handoff, a stop): the others may take them now


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change feed: a hint to the owner, which reads the rows it names."""

    kind: ChangeKind
    """What changed."""
    phone: str | None = None
    """The account (PAUSED), or None."""
    first_id: int | None = None
    """The lowest message id concerned (INSERTED, REQUEUED, CANCELLED)."""
    last_id: int | None = None
    """The highest message id concerned."""
    seq: int = 0
    """Its place in the feed (0 until written)."""


@dataclass(frozen=True, slots=True)
class AccountPause:
    """An account may not send before `until` (persisted: a restart keeps honouring it)."""

    phone: str
    """The account."""
    until: datetime | None
    """First instant it may send again; None: disabled until a user lifts it (ResumeAccount)."""
    reason: str
    """The exception type that caused it ("RateLimited", "AccountSuspended", ...)."""


def pause_end_text(until: datetime | None) -> str:
    """How logs and `postroom status` say when a pause ends ("lifted": only by ResumeAccount)."""
    return "lifted" if until is None else until.isoformat()


@dataclass(frozen=True, slots=True)
class AccountView:
    """What an account actor loads from the database in one read: its start or its next page."""

    pause: AccountPause | None
    """The pause in force, if any."""
    due: list[Message]
    """Up to a window of due open messages, in send order."""
    next_due_at: datetime | None
    """When the first not-yet-due open message falls due."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts of messages by status, overall and per account."""

    by_status: dict[Status, int]
    """Every status, zero included."""
    by_account: dict[str, dict[Status, int]]
    """Per phone, only the statuses it has."""

    @property
    def total(self) -> int:
        """All messages in the table."""
        return sum(self.by_status.values())


@dataclass(frozen=True, slots=True)
class Transition:
    """The outcome of one claimed attempt, applied only if that attempt still holds the row."""

    id: int
    """Message id."""
    attempt: int
    """The attempt number the claim returned: a lease token against late results."""
    status: Status
    """COMPLETED, RETRYING, FAILED, or PENDING/RETRYING for an attempt given back."""
    at: datetime
    """When the outcome was known."""
    error: str | None = None
    """Sanitised error text for RETRYING and FAILED."""
    available_at: datetime | None = None
    """Earliest next attempt, for RETRYING and for a given-back attempt."""
    give_back: bool = False
    """True when the attempt is not counted (rate limited): attempts goes back down."""


@dataclass(frozen=True, slots=True)
class OpenWork:
    """An account's open messages (pending, retrying) at an instant: due, or due later."""

    phone: str
    """The account."""
    due: int
    """Open messages due at the instant (they wait for their turn, or for a pause to end)."""
    scheduled: int
    """Open messages due later: a schedule, or a retry's backoff."""
    oldest_due_at: datetime | None
    """Since when the longest-waiting due message has been due; None when none is due."""


@dataclass(frozen=True, slots=True)
class OwnerState:
    """Who owns the database, as its owner row and the owner lock tell (nothing taken to ask)."""

    holder: str | None
    """The last owner's name ("postroom supervisor pid N on HOST"); None if none ever ran."""
    epoch: int | None
    """Its ownership's number (each owner's start bumps it)."""
    taken_at: datetime | None
    """When it took the database."""
    lock_held: bool | None
    """Whether a supervisor holds the owner lock now; None when it cannot be told (no
    /proc/locks)."""
    lock_holder: str | None
    """Who holds the lock, as the OS or the server names it (a pid), when held."""
    nodes: tuple[NodeState, ...] = ()
    """The nodes recorded in the database (a live one, or one whose lease expired), by id."""


@dataclass(frozen=True, slots=True)
class NodeState:
    """A node of the database, as `postroom_nodes` and `postroom_buckets` tell."""

    node: int
    holder: str
    """"postroom supervisor pid N on HOST"."""
    lease_left: float | None
    """Seconds until its lease expires by the database's clock (negative: expired); None for
    the one owner of a database, whose lease does not expire."""
    buckets: int
    """Buckets it holds."""


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """Which messages `Storage.find_messages` returns, and in what order."""

    phone: str | None = None
    """Of this account only."""
    statuses: tuple[Status, ...] = ()
    """Of these statuses (none: any)."""
    priorities: tuple[Priority, ...] = ()
    """Of these priorities (none: any)."""
    created_from: datetime | None = None
    """Created at or after this instant."""
    created_before: datetime | None = None
    """Created before this instant."""
    error_contains: str | None = None
    """Whose last error contains this text, whatever its case."""
    after_id: int | None = None
    """After this id in the listing's order (the cursor of the next page)."""
    newest_first: bool = False
    """Newest first (highest id) rather than oldest first."""
    limit: int = 50
    """At most this many."""
