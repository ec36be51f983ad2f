"""The messages postroom's actors exchange.

Public commands (sent by users to the supervisor) come first; each is answered by
`ask` with the value named in its docstring, or raises a `PostroomError` subclass
in the caller. With `tell`, a command's error is logged, since nobody waits for it.

Internal messages follow. Every message between actors is a `tell` except where
noted: account actors `ask` the persistence actor and block until the commit,
which is what keeps "never sent before committed" true. A failure inside a `tell`
handler stops the actor and reaches the supervisor through `on_failure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from postroom_common import (
    AccountPause,
    Delivery,
    Message,
    NewBroadcast,
    NewMessage,
    Priority,
    Status,
    StorageError,
    Transition,
)

if TYPE_CHECKING:
    from actors._mailbox import Request

# -- public commands ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Queue one message. Answer: its id (int), once its row is committed."""

    phone: str
    """The sending account (a phone number or any account id)."""
    user_id: str | int
    """The recipient, in the sender's own terms; an int (a Telegram chat id) is stored as its
    decimal text, and the sender gets that string."""
    text: str = ""
    """The body; may be empty only with an attachment."""
    priority: Priority = Priority.NORMAL
    """HIGH before NORMAL before LOW among the account's due messages."""
    attachment: str | None = None
    """An opaque reference for the sender (file id, URL)."""
    scheduled_at: datetime | None = None
    """Send no earlier than this (timezone-aware); None means now."""
    max_attempts: int | None = None
    """Attempts before it ends failed; None takes the supervisor's default."""
    idempotency_key: str | None = None
    """A repeated key answers the first message's id and writes nothing."""


@dataclass(frozen=True, slots=True)
class EnqueueBatch:
    """Queue many messages in one commit (a broadcast). Answer: their ids, in order.

    All or nothing: one invalid message refuses the whole batch before anything is written.
    """

    messages: Sequence[Enqueue]
    """The messages, validated like single `Enqueue`s."""


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Queue one message to many recipients in one commit. Answer: their ids, in order.

    What `EnqueueBatch` of identical messages does, without building an `Enqueue`
    per recipient: the shared fields are checked once. All or nothing.
    """

    recipients: Sequence[tuple[str, str | int]]
    """(phone, user_id) pairs: the sending account and the recipient (a string, or an int
    stored as its decimal text), in send order."""
    # The message every recipient gets: these mean what `Enqueue`'s fields of the same name do.
    text: str = ""
    priority: Priority = Priority.NORMAL
    attachment: str | None = None
    scheduled_at: datetime | None = None
    max_attempts: int | None = None
    idempotency_key: str | None = None
    """Makes the broadcast safe to send again after a crash or a timeout: recipient
    number i (from 0) gets the key `f"{idempotency_key}:{i}"`."""


@dataclass(frozen=True, slots=True)
class GetMessage:
    """Answer: the `Message` with this id, or `MessageNotFound`."""

    message_id: int
    """The id `Enqueue` answered."""


@dataclass(frozen=True, slots=True)
class ListMessages:
    """Answer: an account's messages in enqueue order (a list of `Message`)."""

    phone: str
    """The sending account."""
    status: Status | None = None
    """Only this status; None for all."""
    limit: int = 100
    """At most this many."""
    after_id: int = 0
    """Page on: only ids greater than this."""


@dataclass(frozen=True, slots=True)
class CancelMessage:
    """Cancel a pending or retrying message. Answer: the cancelled `Message`.

    A message already handed to the sender cannot be cancelled (`InvalidTransition`).
    """

    message_id: int
    """The message to cancel."""


@dataclass(frozen=True, slots=True)
class RequeueMessage:
    """Give a failed message a fresh set of attempts. Answer: the requeued `Message`."""

    message_id: int
    """The failed message."""


@dataclass(frozen=True, slots=True)
class GetStats:
    """Answer: `QueueStats`, counts by status overall and per account."""


@dataclass(frozen=True, slots=True)
class CleanupNow:
    """Delete finished rows older than the retention now. Answer: how many were deleted."""

    older_than: timedelta | None = None
    """Override the supervisor's retention for this run."""


@dataclass(frozen=True, slots=True)
class GetHealth:
    """Answer: `Health`, whether the database is writable and which accounts are parked."""


@dataclass(frozen=True, slots=True)
class ResumeAccount:
    """Lift an account's pause (rate limit, suspension) or start it again after it was parked.

    Answer: True if it was paused or parked.
    """

    phone: str
    """The parked account."""


@dataclass(frozen=True, slots=True)
class Drain:
    """Wait until no message is pending, retrying or processing, at most `timeout` seconds.

    Answer: how many messages are still open (0: everything was sent, failed or cancelled).
    Scheduled messages count as open: a script waits for what it queued, not for the future.
    """

    timeout: float | None = None
    """Seconds of real time to wait at most; None: as long as it takes."""


@dataclass(frozen=True, slots=True)
class Health:
    """The supervisor's view of its own state."""

    degraded: bool
    """True while the last write to the database failed."""
    last_error: str | None
    """The last database error, if degraded."""
    accounts_running: int
    """Account actors alive now."""
    parked_accounts: tuple[str, ...]
    """Masked phones of accounts parked after a crash storm."""
    slow_sends: tuple[str, ...] = ()
    """Masked phones of accounts whose send has run longer than `slow_send_after` (a sender
    that hangs: with `send_timeout=None` nothing gives up on it)."""


# -- supervisor <-> persistence ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Persist:
    """Insert validated messages; once committed, hand them to the supervisor, then answer `request`."""

    news: Sequence[NewMessage]
    """Already validated."""
    request: Request | None
    """The user's request: answered with an id (or a list of ids when `batch`). None when
    the user's enqueue itself asked the writer (passed through, actors/door.py)."""
    batch: bool
    """True for `EnqueueBatch` and `Broadcast`."""

    @property
    def keyed(self) -> bool:
        """A batch with an idempotency key: written on its own and all or nothing, since a key
        used before for another message refuses the whole batch."""
        news = self.news
        if isinstance(news, NewBroadcast):
            return news.template.idempotency_key is not None
        return self.batch and any(new.idempotency_key is not None for new in news)


@dataclass(frozen=True, slots=True)
class Committed:
    """Persistence -> supervisor: these rows are committed; hand them to their accounts."""

    messages: Sequence[Message]
    """Requeued rows."""


@dataclass(frozen=True, slots=True)
class Inserted:
    """Persistence -> supervisor: new rows are committed; hand them to their accounts.

    One per commit. The supervisor builds their `Message`s, not the single writer: a
    broadcast's 100,000 would hold up the next commit by a third of a second.
    """

    parts: Sequence[tuple[Sequence[NewMessage], Sequence[tuple[int, int]]]]
    """Per `Persist` of the commit: what it carried, and (id, position in it) of each new row."""


@dataclass(frozen=True, slots=True)
class Cancel:
    """Supervisor -> persistence: cancel, answer `request`, then tell the account to forget it."""

    message_id: int
    """The message."""
    request: Request
    """The user's request."""


@dataclass(frozen=True, slots=True)
class Requeue:
    """Supervisor -> persistence: requeue a failed message; answer `request`, then route it."""

    message_id: int
    """The message."""
    request: Request
    """The user's request."""


@dataclass(frozen=True, slots=True)
class LiftPause:
    """Supervisor -> persistence (asked): delete an account's persisted pause. Answer: True if any."""

    phone: str
    """The account."""


@dataclass(frozen=True, slots=True)
class Recover:
    """Settle PROCESSING rows per the delivery policy (asked). Answer: the rows as written."""

    delivery: Delivery
    """At-least-once or at-most-once."""
    phone: str | None = None
    """One account (after its actor crashed), or all (at boot)."""


@dataclass(frozen=True, slots=True)
class Cleanup:
    """Delete finished rows older than `cutoff`, one chunk per transaction, between other writes."""

    cutoff: datetime
    """Rows that finished before this go."""
    request: Request | None
    """Answered with the total deleted, after the last chunk."""
    deleted_so_far: int = 0
    """Carried from chunk to chunk."""


# -- account <-> persistence (asked: the account blocks until the commit) ------------------


@dataclass(frozen=True, slots=True)
class Advance:
    """Record finished attempts, then claim the next messages, in one transaction.

    Claiming marks a message PROCESSING and counts the attempt. Answer: `Advanced`.
    One round trip per message: the outcome of one send and the claim of the next
    share a commit, and the next send still waits for both.
    """

    record: Sequence[Transition] = ()
    """Outcomes to write; one whose attempt no longer holds its row is skipped."""
    claim: Sequence[int] = ()
    """Ids to claim; ones no longer open and due are skipped."""
    pause: AccountPause | None = None
    """An account-wide pause to persist with the outcome that caused it."""


@dataclass(frozen=True, slots=True)
class Advanced:
    """The answer to `Advance`."""

    recorded: frozenset[int]
    """Ids whose outcome was written."""
    claimed: dict[int, Message]
    """Claimed messages, as committed (PROCESSING)."""


# -- supervisor -> account ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deliver:
    """Committed messages for this account (new or requeued): one tell per account and commit."""

    messages: Sequence[Message]
    """As committed, in id order."""


@dataclass(frozen=True, slots=True)
class Forget:
    """A message was cancelled: drop it from memory."""

    phone: str
    """Its account (for routing)."""
    message_id: int
    """The cancelled message."""


@dataclass(frozen=True, slots=True)
class Unpause:
    """Supervisor -> account: a user lifted the pause; send again now."""


@dataclass(frozen=True, slots=True)
class CheckPause:
    """Supervisor -> account: a pause may have been lifted outside this process (`postroom
    resume`): read the account's pause from the database again and do as it says."""


@dataclass(frozen=True, slots=True)
class Pump:
    """Send the next due message, if any (queued behind other messages, so newcomers are seen first)."""


@dataclass(frozen=True, slots=True)
class Wake:
    """A timer fell due (a schedule, a backoff, the end of a pause, a retry of a failed write)."""

    generation: int = field(default=0)
    """Ignored unless it matches the account's current timer."""


# -- account -> supervisor ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountFailed:
    """An account actor crashed (sent from its `on_failure`)."""

    phone: str
    """The account."""
    actor_urn: str
    """Which incarnation died (a stale report about an older one is ignored)."""
    error: str
    """The exception's type name."""


@dataclass(frozen=True, slots=True)
class AccountIdle:
    """An account actor has had nothing due for its idle timeout and offers to stop."""

    phone: str
    """The account."""
    actor_urn: str
    """Which incarnation stopped."""
    wake_at: datetime | None
    """Its earliest scheduled or backed-off message."""
    deliveries_seen: int
    """How many `Deliver`s it has handled: the supervisor stops it only if it routed no more."""


@dataclass(frozen=True, slots=True)
class AccountPaused:
    """An account recorded a pause or a suspension (committed): the supervisor watches for its
    lifting by another process."""

    phone: str
    """The account."""
    until: datetime | None
    """The end of the pause; None: disabled until lifted."""


@dataclass(frozen=True, slots=True)
class SuspectSettled:
    """An account started to send a suspect alone is done with it (see `AccountDeps.watch`)."""

    phone: str
    """The account."""
    actor_urn: str
    """Which incarnation."""


@dataclass(frozen=True, slots=True)
class RunCleanup:
    """The supervisor's hourly timer fired."""


@dataclass(frozen=True, slots=True)
class WakeAccounts:
    """The supervisor's timer for idle accounts with scheduled work fired."""


@dataclass(frozen=True, slots=True)
class CheckPauses:
    """The supervisor's timer to read the pauses in force (lifted ones, disabled accounts) fired."""


@dataclass(frozen=True, slots=True)
class PausesRead:
    """The pauses in force, read for the supervisor (or why they could not be)."""

    pauses: Sequence[AccountPause] | StorageError
    """Every pause in force when read, or the error."""
    asked: int
    """`PauseWatch.asking()`'s token for this read."""


@dataclass(frozen=True, slots=True)
class CheckDrains:
    """The supervisor's timer to count open messages for waiting `Drain`s fired."""


@dataclass(frozen=True, slots=True)
class OpenCounted:
    """How many messages are open, counted for waiting `Drain`s (or why it could not be)."""

    count: int | StorageError
    """Pending, retrying and processing messages, or the error."""
