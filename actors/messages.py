"""The messages postroom's actors exchange.

Public commands (sent by users to the supervisor) come first; each is answered by
`ask` with the value named in its docstring, or raises a `PostroomError` subclass
in the caller. With `tell`, a command's error is logged, since nobody waits for it.

Internal messages follow, grouped by who sends them to whom. Every one is a `tell`
except the writer's requests, which are asked: by an account with `ask_actor` (the
answer comes back as `Answer` mail; nobody blocks), by the supervisor with the user's
reply, which the writer answers itself once the commit is done. An exception in a
handler of a told message is a failure of that actor; the supervisor hears of it
(`AccountCrashed`). Releasing an account is an exchange of messages that ends with
`AccountReleased`, whoever began it (`Release`, a crash): nobody waits inside a turn.
"""

from __future__ import annotations

import enum
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
    PostroomError,
    Priority,
    Status,
    StorageError,
    Transition,
)

if TYPE_CHECKING:
    from actors.sending import SendTicket

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
    per recipient: the shared fields are checked once. All or nothing: like a batch it is
    one transaction, and every other write waits while it is written. A huge one is best
    sent in chunks, each with its own idempotency key (README, Known limitations).
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
    The whole database's are counted: with several nodes, every node's.
    """

    timeout: float | None = None
    """Seconds of real time to wait at most; None: as long as it takes."""


@dataclass(frozen=True, slots=True)
class AbandonedSends:
    """Plain senders given up on at `send_timeout` (their message retried) that have not
    returned: each keeps a thread and its stack until it does, if ever."""

    count: int = 0
    """Threads still in such a sender."""
    oldest: float | None = None
    """Seconds since the oldest of those sends began; None when there is none."""
    bound: int = 0
    """At most this many of them do not count against `send_threads` (`abandoned_send_threads`)."""
    past_bound: int = 0
    """Of them, how many count against `send_threads` (past the bound): that many fewer threads
    for the other accounts' sends, and none at all once they fill it."""


@dataclass(frozen=True, slots=True)
class Health:
    """The supervisor's view of its own state."""

    degraded: bool
    """True while the last write to the database failed (`last_error` says how), while an
    account is disabled until lifted (`disabled_accounts` names it), or while a sender runs
    past its `send_timeout` (`abandoned_sends`)."""
    last_error: str | None
    """The last database error while writes fail; None once one succeeds (so a degraded health
    without it is the disabled accounts' alone)."""
    accounts_running: int
    """Account actors alive now."""
    parked_accounts: tuple[str, ...]
    """Masked phones of accounts parked after a crash storm."""
    slow_sends: tuple[str, ...] = ()
    """Masked phones of accounts whose send has run longer than `slow_send_after` (a sender
    that hangs: with `send_timeout=None` nothing gives up on it)."""
    disabled_accounts: tuple[str, ...] = ()
    """Masked phones of accounts disabled until lifted (`AccountSuspended` without a duration:
    banned, session revoked), as last read or recorded; `ResumeAccount` or `postroom resume`
    lifts them."""
    abandoned_sends: AbandonedSends = field(default_factory=AbandonedSends)
    """Plain senders still running past their `send_timeout`, each on a thread of its own."""
    node: int | None = None
    """This supervisor's node id in `postroom_nodes` (each start is a new one)."""
    buckets_held: int | None = None
    """A node of several: how many of the buckets it holds now (0 while it has none, after a
    lost lease until it takes some again); None: the database's one owner, holding them all."""


# -- to the writer (asked) ----------------------------------------------------------------


class BatchKind(enum.Enum):
    """The command an `Insert` came from (its value is the command's name), for its answer."""

    ONE = "Enqueue"  # answered with an id
    BATCH = "EnqueueBatch"  # a list of ids; a bad message is "message i"
    BROADCAST = "Broadcast"  # a list of ids; a bad recipient is "recipient i"


@dataclass(frozen=True, slots=True)
class Insert:
    """Insert validated messages, hand the new rows to their accounts, answer the ids."""

    news: Sequence[NewMessage]
    """Already validated (a `NewBroadcast` for a broadcast)."""
    kind: BatchKind
    """What the user sent."""

    @property
    def keyed(self) -> bool:
        """A batch with an idempotency key: written on its own and all or nothing, since a key
        used before for another message refuses the whole batch."""
        news = self.news
        if isinstance(news, NewBroadcast):
            return news.template.idempotency_key is not None
        return self.kind is not BatchKind.ONE and any(new.idempotency_key is not None for new in news)

    def ids(self, outcome: Sequence[int | Message | PostroomError]) -> list[int]:
        """The ids `Storage.insert` answered for these messages, in order (a repeated key
        answers the first message's id); a conflict it answered is raised."""
        ids: list[int] = []
        for answer in outcome:
            if isinstance(answer, PostroomError):
                raise answer
            ids.append(answer.id if isinstance(answer, Message) else answer)
        return ids

    def answer(self, ids: Sequence[int]) -> int | list[int]:
        """What the caller is answered: an id for an `Enqueue`, the list for a batch."""
        return ids[0] if self.kind is BatchKind.ONE else list(ids)


@dataclass(frozen=True, slots=True)
class RecordAndClaim:
    """An account's transaction: record an outcome, persist a pause, claim its next message;
    once committed, start the send of what was claimed (`send`). Answer: `Recorded`.

    Everything but the record is fenced: written only while this node holds the account's
    bucket at its epoch (`Recorded.fenced` otherwise). The record is guarded by its attempt
    alone: a send that did happen is recorded even by a node that lost the bucket since."""

    phone: str
    """The account."""
    record: Transition | None = None
    """An outcome; applied only if its attempt still holds the row."""
    pause: AccountPause | None = None
    """An account-wide pause written with it."""
    claim: int | None = None
    """The id to claim; skipped if no longer open and due."""
    send: SendTicket | None = None
    """Starts the send of the claimed message, after the commit."""
    reclaim: str | None = None
    """A phone whose rows left `processing` go back, their attempt uncounted (after a claim
    whose answer was lost: the account holds none of them)."""
    settle: tuple[Delivery, str] | None = None
    """Acquire: settle the rows an earlier owner left `processing` on this phone."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """The answer to `RecordAndClaim`."""

    applied: bool
    """The outcome was written (False: a stale outcome, its attempt no longer holds the row)."""
    claimed: Message | None
    """The claimed message, as committed (PROCESSING), whose send the writer started."""
    fenced: bool = False
    """This node no longer holds the account's bucket: nothing but the record was written, and
    the account must stop (another node sends for it now, or will)."""
    settled: Sequence[Message] = ()
    """The rows an earlier owner left in flight that this transaction settled (`settle`), as
    written (for the outcome hooks: some end failed)."""


@dataclass(frozen=True, slots=True)
class CancelRow:
    """Cancel a pending or retrying message. Answer: the cancelled `Message`."""

    message_id: int
    """The message."""


@dataclass(frozen=True, slots=True)
class RequeueRow:
    """Give a failed message fresh attempts and hand it to its account. Answer: the `Message`."""

    message_id: int
    """The message."""


@dataclass(frozen=True, slots=True)
class LiftPause:
    """Delete an account's persisted pause. Answer: True if there was one."""

    phone: str
    """The account."""


@dataclass(frozen=True, slots=True)
class SettleInFlight:
    """Settle the rows a crashed account actor left `processing`, per the delivery policy
    (fenced like a claim). Answer: the rows as written, or `Fenced`."""

    delivery: Delivery
    """At-least-once (sent again) or at-most-once (failed as interrupted)."""
    phone: str
    """The account."""


@dataclass(frozen=True, slots=True)
class Fenced:
    """The answer to a fenced write: this node does not hold the account's bucket (any more)."""

    phone: str
    """The account."""


@dataclass(frozen=True, slots=True)
class TakeBuckets:
    """Take buckets (those nobody holds, or whose owner's lease has expired; `force`: all) at
    new epochs, and settle what their former owners left in flight. Answer: `BucketsTaken`."""

    node: int
    """This node's id."""
    buckets: Sequence[int]
    """The buckets wanted."""
    delivery: Delivery
    """How the rows left in flight are settled."""
    force: bool = False
    """Take them whoever holds them: the exclusive owner of the database, at boot."""


@dataclass(frozen=True, slots=True)
class BucketsTaken:
    """The answer to `TakeBuckets`."""

    epochs: dict[int, int]
    """{bucket: its new epoch} of the buckets taken (those still held elsewhere are not)."""
    settled: list[Message]
    """The rows their former owners left in flight, as settled."""


@dataclass(frozen=True, slots=True)
class ReleaseBuckets:
    """Let go of buckets this node holds, once their accounts are released (a handoff).
    Answer: None."""

    node: int
    """This node's id."""
    buckets: Sequence[int]
    """The buckets."""


@dataclass(frozen=True, slots=True)
class DeleteFinished:
    """Delete finished rows older than `cutoff`, one chunk per transaction, between other
    writes. Answer: how many, after the last chunk."""

    cutoff: datetime
    """Rows that finished before this go."""
    deleted_so_far: int = 0
    """Carried from chunk to chunk."""


@dataclass(frozen=True, slots=True)
class TrimChanges:
    """Delete the change feed's entries written before `before` (read long ago). Answer: how many."""

    before: datetime
    """The cutoff."""


@dataclass(frozen=True, slots=True)
class WriteBarrier:
    """Write nothing; answered (None) once every write the writer received before it is
    committed or refused: a `Drain` counts only after the enqueues sent before it."""


# -- from the writer ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arrived:
    """Writer (or supervisor) -> account: committed rows of this account, new or requeued."""

    messages: Sequence[Message]
    """As committed, in id order."""


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Writer -> account: a message was cancelled: out of its window."""

    message_id: int
    """The message."""


@dataclass(frozen=True, slots=True)
class StartAccountsFor:
    """Writer -> supervisor: committed rows whose account is not running: start it (or let it
    sleep until they are due)."""

    messages: Sequence[Message]
    """As committed."""


# -- supervisor -> account --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PauseLifted:
    """A user lifted the account's pause in this process (`ResumeAccount`): send again."""


@dataclass(frozen=True, slots=True)
class ReadPauseAgain:
    """A pause may have been lifted by another process (`postroom resume`): read it again."""


@dataclass(frozen=True, slots=True)
class Release:
    """Stop claiming; let the send in flight end and record it; then report `AccountReleased`."""


# -- account -> supervisor ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountCrashed:
    """An account actor failed: it takes no more work (sent as it fails)."""

    phone: str
    """The account."""
    actor_urn: str
    """Which incarnation (a report about an older one is ignored)."""
    error: str
    """The exception's type name."""
    releasing: bool = False
    """It still holds what it gives back by mail (the end of its send, the writer's answer):
    `AccountReleased` follows, and the account must not start again before. False: it held
    nothing and is gone."""


@dataclass(frozen=True, slots=True)
class AccountIdle:
    """An account has had nothing due for its idle timeout and offers to stop."""

    phone: str
    """The account."""
    actor_urn: str
    """Which incarnation."""
    wake_at: datetime | None
    """Its earliest scheduled or backed-off message."""
    deliveries_seen: int
    """How many deliveries it handled: it is stopped only if it was sent no more."""


@dataclass(frozen=True, slots=True)
class AccountPaused:
    """An account recorded a pause or a suspension: the supervisor watches for its lifting."""

    phone: str
    """The account."""
    until: datetime | None
    """The end of the pause; None: disabled until lifted."""


@dataclass(frozen=True, slots=True)
class SuspectSettled:
    """An account started to send a suspect alone is done with it."""

    phone: str
    """The account."""
    actor_urn: str
    """Which incarnation."""


@dataclass(frozen=True, slots=True)
class AccountReleased:
    """An account released what it held after `Release` or a crash, and stopped (what it could
    not give back within its wait is left for acquiring to settle)."""

    phone: str
    """The account."""
    actor_urn: str
    """Which incarnation."""


# -- the supervisor's timers and reads ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CleanupDue:
    """The hourly cleanup timer fired."""


@dataclass(frozen=True, slots=True)
class SleepersDue:
    """The timer of stopped accounts with scheduled work fired."""


@dataclass(frozen=True, slots=True)
class PauseCheckDue:
    """Time to read the pauses in force (lifted ones, disabled accounts)."""


@dataclass(frozen=True, slots=True)
class PausesRead:
    """The pauses in force, read for the supervisor (or why they could not be)."""

    pauses: Sequence[AccountPause] | StorageError
    """Every pause in force when read, or the error."""
    asked: int
    """`PauseWatch.asking()`'s token for this read."""


@dataclass(frozen=True, slots=True)
class ChangesDue:
    """Time to read the change feed: its poll fell due, or another process notified a change."""


@dataclass(frozen=True, slots=True)
class FeedRead:
    """What the change feed named since the last read, as the database has it now."""

    messages: Sequence[Message]
    """Open rows other processes inserted or requeued, in id order."""
    cancelled: Sequence[tuple[str, int]]
    """(phone, id) of messages other processes cancelled."""
    paused: Sequence[str]
    """Accounts whose pause other processes set or lifted."""
    more: bool
    """The read stopped at its limit: read again at once."""
    error: StorageError | None = None
    """Why the feed could not be read (the rest is empty then)."""
    buckets_freed: bool = False
    """A node let buckets go: a node of several places them again at once."""


@dataclass(frozen=True, slots=True)
class DrainCheckDue:
    """Time to count open messages for the waiting `Drain`s."""


@dataclass(frozen=True, slots=True)
class OpenCounted:
    """How many messages are open, counted for waiting `Drain`s (or why it could not be)."""

    count: int | StorageError
    """Pending, retrying and processing messages, or the error."""
    number: int
    """Which count this is (they are numbered as they start)."""
