"""An account's behaviour as a pure state machine: events in, commands out.

No threads, no clock, no I/O. Each event carries the time (`At`); what the account
must do comes back as commands (read its window, write an outcome and claim the next
message, arm its timer, report to the supervisor, log) that the actor around it
(`actors/account.py`) carries out, feeding their results back as events. Everything an
account decides lives here: which message goes next (priority, then enqueue order;
pacing), what an outcome means (retry with backoff, fail, pause the whole account,
disable it until lifted), when it rests, when it has been idle long enough to stop,
the suspect rule, and how it is acquired and released.

A claim and its send are one step: the writer starts the send of a message it has
just claimed, after the commit (`WriteAndClaim`), and its answer comes with the end of
that send: `written`, then `send_ended`, in one turn of the actor. An outcome and the
next claim share one transaction.

States (`AccountState`):
    ACQUIRING  an earlier owner's in-flight rows are being settled, or the window read
    IDLE       nothing in flight; a timer may be armed
    CLAIMING   a write that claims the next message (and starts its send) is in flight
    SENDING    the claim is answered, the send's end is still to come
    RECORDING  its outcome (and maybe the next claim) is being written
    RELEASED   nothing held, nothing more to do

Invariants (tests/unit/test_account_machine.py checks them after every step):
    - at most one message is out of the account: claimed, being sent or being recorded;
    - a message is sent only once its claim is committed (the writer starts it then);
    - among due messages, claims follow priority then id (pacing aside);
    - nothing is claimed while the account is paused or disabled;
    - an attempt that ended in a rate limit is given back;
    - each outcome is written until it is recorded, and recorded once; once the account is
      released, a write that fails is not tried again (the next start settles its row).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

from actors.ordering import SendOrder
from actors.pacing import Pacer, Pacing
from actors.privacy import describe_error
from actors.retry import BackoffPolicy, Next, RandomSource, decide
from postroom_common import (
    AccountPause,
    AccountView,
    Message,
    Status,
    Transition,
    ValidationError,
    pause_end_text,
)
from postroom_common.checks import check_count, check_seconds, later

__all__ = [
    "AccountMachine",
    "AccountSettings",
    "AccountState",
    "ArmTimer",
    "At",
    "Command",
    "Log",
    "ReadWindow",
    "ReportIdle",
    "ReportPaused",
    "ReportReleased",
    "ReportSuspectSettled",
    "WriteAndClaim",
]


@dataclass(frozen=True, slots=True)
class AccountSettings:
    """How every account behaves."""

    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    """Retry delays and the cap on a rate limit's pause."""
    send_timeout: float | None = 60.0
    """Seconds a send may take; past that the outcome is unknown and it is retried. None: no
    limit (the sender still runs on the send pool, never on an actor's thread)."""
    window: int = 64
    """Due messages held in memory per account; the rest stay in the database."""
    storage_retry: float = 1.0
    """Seconds before a read or write that failed is tried again."""
    idle_timeout: float | None = 30.0
    """Seconds with nothing due before the account offers to stop (its memory freed); None: never."""

    def __post_init__(self) -> None:
        if not isinstance(self.backoff, BackoffPolicy):
            raise ValidationError(f"AccountSettings.backoff must be a BackoffPolicy, not {self.backoff!r}")
        check_seconds("AccountSettings.send_timeout", self.send_timeout, positive=True, optional=True)
        check_count("AccountSettings.window", self.window, minimum=1)
        check_seconds("AccountSettings.storage_retry", self.storage_retry, positive=True)
        check_seconds("AccountSettings.idle_timeout", self.idle_timeout, optional=True)


class At(NamedTuple):
    """When an event happened: the wall clock (schedules, pauses) and the monotonic one (intervals)."""

    now: datetime
    mono: float


class AccountState(enum.Enum):
    """Where the account is in its cycle (see the module's docstring)."""

    ACQUIRING = "acquiring"
    IDLE = "idle"
    CLAIMING = "claiming"
    SENDING = "sending"
    RECORDING = "recording"
    RELEASED = "released"


# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadWindow:
    """Read the account's pause, its first `page` due messages and when the next one falls due."""

    page: int


@dataclass(frozen=True, slots=True)
class WriteAndClaim:
    """One transaction at the writer; answered by `written` (or `write_failed`)."""

    record: Transition | None = None
    """An outcome to write (applied only if its attempt still holds the row)."""
    pause: AccountPause | None = None
    """An account-wide pause to persist with it."""
    claim: Message | None = None
    """The next message to claim; once claimed, the writer starts its send."""
    recover: bool = False
    """Acquire: settle the rows an earlier owner left in flight (the delivery policy decides)."""
    reclaim: bool = False
    """After a claim whose outcome is unknown (its write failed, perhaps after the commit): the
    rows of this account left `processing`, which it does not hold, go back, their attempt
    uncounted. Written alone, and the window read again after it: what comes back may come first."""


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Deliver `timer_fired(generation)` at `at` (one timer per account: a later one replaces it)."""

    at: datetime
    generation: int


@dataclass(frozen=True, slots=True)
class ReportIdle:
    """Nothing due for `idle_timeout`: offer to stop (the supervisor stops it only if it sent
    the account nothing since `deliveries_seen`)."""

    wake_at: datetime | None
    deliveries_seen: int


@dataclass(frozen=True, slots=True)
class ReportPaused:
    """A pause or a suspension was recorded (None: until lifted)."""

    until: datetime | None


@dataclass(frozen=True, slots=True)
class ReportSuspectSettled:
    """The suspect this account was started for is done with (see `AccountMachine.watch`)."""


@dataclass(frozen=True, slots=True)
class ReportReleased:
    """Released: nothing held; the account may stop."""


@dataclass(frozen=True, slots=True)
class Log:
    """A log event (never a message's text; the phone is bound by the actor, masked)."""

    level: str
    event: str
    fields: dict[str, Any]


Command = ReadWindow | WriteAndClaim | ArmTimer | ReportIdle | ReportPaused | ReportSuspectSettled \
    | ReportReleased | Log


# -- the machine ---------------------------------------------------------------------------------


class AccountMachine:
    """One account's queue and decisions (see the module's docstring)."""

    def __init__(self, phone: str, settings: AccountSettings, pacing: Pacing, rng: RandomSource, at: At,
                 watch: int | None = None) -> None:
        self.phone = phone
        self.settings = settings
        self.rng = rng
        self.watch = watch
        """A suspect's id: the account runs alone until that message's outcome is recorded (or
        it cannot be sent now), then reports it and claims nothing more."""
        self.state = AccountState.ACQUIRING
        self.window = SendOrder(settings.window)
        self.pacer = Pacer(pacing, at.mono)
        self.paused_until: datetime | None = None
        self.disabled = False
        self._pause_known = False  # read from the database at least once (a pause outlives a restart)
        self._wake_at: datetime | None = None  # the earliest future message known to be in the database
        self._timer_at: datetime | None = None
        self._generation = 0
        self._idle_since: float | None = None
        self.deliveries_seen = 0
        self._reading = False
        self._arrived_meanwhile: list[Message] = []
        self._asked: WriteAndClaim | None = None  # the write in flight
        self.sending: Message | None = None  # the message the sender has
        self._unrecorded: WriteAndClaim | None = None  # an outcome to write, again after a failure
        self._reclaim = False  # the next write gives back what a lost answer may have claimed
        self._paced = False  # the last pick found work that pacing holds back
        self._limited_in_a_row = 0  # rate limits with no send going through between them
        self._watching = watch is not None
        self._releasing = False

    # -- what the machine tells about itself ----------------------------------------------------

    @property
    def released(self) -> bool:
        """Released: nothing held, nothing more to do."""
        return self.state is AccountState.RELEASED

    @property
    def in_flight(self) -> bool:
        """A write, a read or a send is out: its answer continues the cycle."""
        return self._asked is not None or self.sending is not None or self._reading

    @property
    def awaits_write(self) -> bool:
        """A write was asked for and its answer (`written`, `write_failed`) is still to come."""
        return self._asked is not None

    @property
    def held(self) -> int | None:
        """The id of the message out of the account (claimed, sent, or being recorded), if any."""
        if self.sending is not None:
            return self.sending.id
        for write in (self._asked, self._unrecorded):
            if write is not None and write.record is not None:
                return write.record.id
        if self._asked is not None and self._asked.claim is not None:
            return self._asked.claim.id
        return None

    # -- events -----------------------------------------------------------------------------------

    def acquire(self, at: At, *, recover: bool) -> list[Command]:
        """Start from the database; with `recover`, first settle what an earlier owner left in flight."""
        if recover:
            return [self._ask(WriteAndClaim(recover=True))]
        return self._read()

    def loaded(self, view: AccountView, at: At) -> list[Command]:
        """The window read (the pause with the first one)."""
        self._reading = False
        commands: list[Command] = []
        if not self._pause_known:
            self._pause_known = True
            commands += self._adopt_pause(view.pause)
        self.window.replace(view.due)
        if view.next_due_at is not None:
            commands += self._note_future(view.next_due_at)
        arrived, self._arrived_meanwhile = self._arrived_meanwhile, []
        for message in arrived:
            commands += self._accept(message, at)
        return commands + self._next(at)

    def read_failed(self, error: str, at: At) -> list[Command]:
        self._reading = False
        after = self._next(at) if self._releasing else self._arm(later(at.now, self.settings.storage_retry))
        return [Log("warning", "account.read_failed", {"error": error}), *after]

    def arrived(self, messages: Sequence[Message], at: At) -> list[Command]:
        """New or requeued messages of this account, as committed (one delivery)."""
        self.deliveries_seen += 1
        if self._reading:
            self._arrived_meanwhile.extend(messages)  # merged into the window the read brings
            return []
        commands: list[Command] = []
        for message in messages:
            commands += self._accept(message, at)
        return commands + self._next(at)

    def written(self, applied: bool, claimed: Message | None, at: At) -> list[Command]:
        """The write in flight committed: whether its outcome applied, and what it claimed."""
        asked, self._asked = self._asked, None
        assert asked is not None, "an answer to no write"
        commands: list[Command] = []
        if asked.reclaim:
            self._reclaim = False
            self.window.invalidate()
        if asked.record is not None or asked.recover:
            self._unrecorded = None  # what had to be written is
        if asked.record is not None:
            commands += self._after_record(asked.record, asked.pause, applied)
        if asked.recover:
            return commands + self._read()  # acquired: now the window, as the database has it
        if claimed is not None:
            self.sending, self.state = claimed, AccountState.SENDING  # the writer started its send
            self._idle_since = None
            return commands
        return commands + self._next(at)

    def write_failed(self, error: str, at: At) -> list[Command]:
        """The write in flight failed: it committed nothing, or its answer was lost. Released
        meanwhile, the account does not try again: what it could not write is left as the
        database has it, for the next start to settle."""
        asked, self._asked = self._asked, None
        assert asked is not None, "a failure of no write"
        if asked.claim is not None:
            self.window.push_back(asked.claim)
            self._reclaim = True  # if it did commit, the claim is an orphan: give it back
        if asked.recover:
            self._unrecorded = asked
        self.state = AccountState.IDLE
        failed = Log("warning", "account.write_failed", {"error": error})
        if self._releasing:
            return [failed, *self._leave_unwritten(asked), *self._next(at)]
        return [failed, *self._arm(later(at.now, self.settings.storage_retry))]

    def _leave_unwritten(self, asked: WriteAndClaim) -> list[Command]:
        """Forget what is still to be written (the next start's recovery settles those rows)."""
        unwritten = self._unrecorded.record if self._unrecorded is not None else asked.record
        self._unrecorded, self._reclaim = None, False
        held = {"message_id": unwritten.id, "attempt": unwritten.attempt} if unwritten else {}
        return [Log("warning", "account.release_unrecorded",
                    {**held, "left": "as the database has it, until the next start settles it"})]

    def fenced(self, applied: bool, at: At) -> list[Command]:
        """The write in flight was fenced: this node no longer holds the account's bucket. Its
        record was written if its attempt held (`applied`); nothing else was, and nothing more
        is asked: the account's new owner settles what is left. Released."""
        asked, self._asked = self._asked, None
        assert asked is not None, "an answer to no write"
        commands: list[Command] = [Log("warning", "account.fenced", {
            "left": "another node owns this account's bucket now: it sends the rest"})]
        if asked.record is not None:
            commands += self._after_record(asked.record, None, applied)
        self._unrecorded, self._reclaim, self._releasing = None, False, True
        self.state = AccountState.IDLE
        return commands + self._next(at)

    def write_not_sent(self, at: At) -> list[Command]:
        """The write asked for never reached the writer (the actor failed first), so nothing of
        it committed: its claim goes back to the window and what it had to record is asked again."""
        asked, self._asked = self._asked, None
        assert asked is not None, "no write to call off"
        if asked.claim is not None:
            self.window.push_back(asked.claim)
        if asked.recover:
            self._unrecorded = asked
        self.state = AccountState.IDLE
        return self._next(at)

    def send_ended(self, error: BaseException | None, at: At) -> list[Command]:
        """The sender returned (error None) or raised `error` (a `SendTimeout` when it took too long)."""
        message, self.sending = self.sending, None
        assert message is not None, "the end of no send"
        self.pacer.sent(message.user_id, at.mono)
        record, pause = self._outcome(message, error, at)
        claim: Message | None = None
        commands: list[Command] = []
        if record.id != self.watch and not record.give_back and not self._releasing:
            claim, commands = self._pick(at)  # a paced pick arms its timer; the record goes on alone
            self._paced = False
        self._unrecorded = WriteAndClaim(record=record, pause=pause)
        return [*commands, self._ask(WriteAndClaim(record=record, pause=pause, claim=claim))]

    def send_not_begun(self, error: str, at: At) -> list[Command]:
        """The writer could not start the send (no thread to run it): the claim goes back,
        its attempt uncounted, and the account tries again after `storage_retry`."""
        message, self.sending = self.sending, None
        assert message is not None, "no send to give back"
        self._unrecorded = WriteAndClaim(record=_given_back(message, at.now))
        self.state = AccountState.IDLE
        then = self._next(at) if self._releasing else self._arm(later(at.now, self.settings.storage_retry))
        # Released (a stop): the supervisor logs one line for all of them, not one per account.
        level = "debug" if self._releasing else "warning"
        return [Log(level, "account.send_deferred", {"message_id": message.id, "error": error}), *then]

    def timer_fired(self, generation: int, at: At) -> list[Command]:
        if generation != self._generation:
            return []  # replaced by a later timer
        self._timer_at = None
        return self._next(at)

    def forget(self, message_id: int) -> list[Command]:
        """A message was cancelled: out of the window."""
        self.window.discard(message_id)
        return []

    def unpause(self, at: At) -> list[Command]:
        """A user lifted the pause (ResumeAccount, in this process)."""
        self.paused_until, self.disabled = None, False
        return self._next(at)

    def check_pause(self, at: At) -> list[Command]:
        """A pause may have been lifted by another process: read it again with the next page."""
        self._pause_known = False
        self.window.invalidate()
        return self._next(at)

    def release(self, at: At) -> list[Command]:
        """Stop claiming; the send in flight ends and its outcome is recorded; then released."""
        self._releasing = True
        return self._next(at)

    # -- the cycle ------------------------------------------------------------------------------

    def _next(self, at: At) -> list[Command]:
        """Nothing in flight: decide what comes next."""
        if self.in_flight or self.state is AccountState.RELEASED:
            return []
        self.state = AccountState.IDLE
        if self._unrecorded is not None:
            return [self._ask(self._unrecorded)]  # an outcome whose write failed: again, alone
        if self._reclaim:
            return [self._ask(WriteAndClaim(reclaim=True))]
        if self._releasing:
            self.state = AccountState.RELEASED
            return [ReportReleased()]
        if self.watch is not None and not self._watching:
            return []  # the suspect is settled: the supervisor stops this incarnation
        if not self._pause_known:
            return self._read()  # the pause comes with the first read
        if self.disabled:
            return self._settle_suspect() + self._rest(at)
        if self.paused_until is not None and at.now < self.paused_until:
            return self._settle_suspect() + self._arm(self.paused_until)
        self.paused_until = None
        if self._needs_read(at):
            return self._read()
        candidate, commands = self._pick(at)
        if candidate is None:
            paced, self._paced = self._paced, False
            return commands if paced else commands + self._rest(at)
        self._idle_since = None
        return [self._ask(WriteAndClaim(claim=candidate))]

    def _needs_read(self, at: At) -> bool:
        if self._wake_at is not None and self._wake_at <= at.now:
            self._wake_at = None
            self.window.invalidate()  # something fell due in the database: reload in full order
        return not len(self.window) and not self.window.complete

    def _read(self) -> list[Command]:
        self._reading = True
        self.state = AccountState.ACQUIRING
        return [ReadWindow(self.window.page)]

    def _ask(self, write: WriteAndClaim) -> WriteAndClaim:
        self._asked = write
        self.state = (AccountState.RECORDING if write.record is not None
                      else AccountState.CLAIMING if write.claim is not None else AccountState.ACQUIRING)
        return write

    def _pick(self, at: At) -> tuple[Message | None, list[Command]]:
        """The next message pacing allows, from a fresh window; if pacing holds work back, the
        timer for when it allows it (and `_paced`)."""
        if self._needs_read(at) or self.disabled or (self.paused_until is not None
                                                     and at.now < self.paused_until):
            return None, []
        wait = self.pacer.token_wait(at.mono)
        if wait == 0.0:
            message = self.window.pop_first(lambda m: self.pacer.recipient_wait(m.user_id, at.mono) == 0.0)
            if message is not None or not len(self.window):
                return message, []
            wait = min(self.pacer.recipient_wait(m.user_id, at.mono) for m in self.window.messages())
        self._paced = True
        return None, self._arm(later(at.now, wait))

    def _accept(self, message: Message, at: At) -> list[Command]:
        if message.available_at > at.now:
            return self._note_future(message.available_at)
        self.window.offer(message)  # if rows in the database sort first, it is read with them
        return []

    def _rest(self, at: At) -> list[Command]:
        """Nothing due: wait for the next timer, or offer to stop if idle long enough."""
        commands = self._settle_suspect() + self._arm(self._wake_at)
        idle = self.settings.idle_timeout
        if idle is None:
            return commands
        if self._idle_since is None:
            self._idle_since = at.mono
        if at.mono - self._idle_since >= idle:
            self._idle_since = at.mono
            return [*commands, ReportIdle(self._wake_at, self.deliveries_seen)]
        check = later(at.now, idle - (at.mono - self._idle_since))
        return commands + self._arm(min(check, self._wake_at) if self._wake_at else check)

    def _settle_suspect(self) -> list[Command]:
        if not self._watching:
            return []
        self._watching = False
        return [ReportSuspectSettled()]

    # -- outcomes ----------------------------------------------------------------------------------

    def _outcome(self, message: Message, error: BaseException | None,
                 at: At) -> tuple[Transition, AccountPause | None]:
        """What to write after a send: the message's transition, and a pause for the account."""
        if error is None:
            self._limited_in_a_row = 0
            return Transition(message.id, message.attempts, Status.COMPLETED, at.now), None
        decision = decide(error, message.attempts, message.max_attempts, at.now, self.settings.backoff,
                          self.rng, limited_in_a_row=self._limited_in_a_row + 1)
        self._limited_in_a_row = self._limited_in_a_row + 1 if decision.next is Next.PAUSE else 0
        text = describe_error(error, message)
        if decision.next is Next.RETRY:
            return Transition(message.id, message.attempts, Status.RETRYING, at.now, text, decision.at), None
        if decision.next is Next.FAIL:
            return Transition(message.id, message.attempts, Status.FAILED, at.now, text), None
        # PAUSE or DISABLE: the account stops; the message keeps its place, its attempt given back.
        back = replace(_given_back(message, at.now), error=text)
        return back, AccountPause(self.phone, decision.at, type(error).__name__)

    def _after_record(self, t: Transition, pause: AccountPause | None, applied: bool) -> list[Command]:
        ids = {"message_id": t.id, "attempt": t.attempt}
        commands: list[Command] = []
        if t.id == self.watch:
            commands += self._settle_suspect()
        if pause is not None:  # written with the outcome, applied or not: the account pauses
            commands += self._paused_by(pause, t, ids)
        if t.give_back:
            self.window.invalidate()  # the message is due again, first in line: read it back in place
        if not applied:
            # The row is not as this account thought: an earlier write of this very outcome may
            # have committed with its answer lost (a retry due at a time the account never
            # learnt). Read the window again before the next claim, so that nothing overtakes it.
            self.window.invalidate()
            return [*commands, Log("warning", "message.stale_outcome", {"status": t.status.value, **ids})]
        if t.status is Status.COMPLETED:
            return [*commands, Log("info", "message.sent", ids)]
        if t.status is Status.FAILED:
            return [*commands, Log("warning", "message.failed", {"error": _error_kind(t.error), **ids})]
        if t.status is Status.RETRYING and not t.give_back and t.available_at is not None:
            return [*commands, *self._note_future(t.available_at),
                    Log("info", "message.retrying",
                        {"at": t.available_at.isoformat(), "error": _error_kind(t.error), **ids})]
        return commands

    def _paused_by(self, pause: AccountPause, t: Transition, ids: dict[str, Any]) -> list[Command]:
        if pause.until is None:
            self.disabled = True
            return [ReportPaused(None),
                    Log("error", "account.disabled", {"until": pause_end_text(None),
                                                      "error": _error_kind(t.error), **ids})]
        self.paused_until = pause.until
        event = "account.suspended" if pause.reason == "AccountSuspended" else "account.rate_limited"
        return [*self._note_future(pause.until), ReportPaused(pause.until),
                Log("warning", event, {"until": pause_end_text(pause.until), **ids})]

    def _adopt_pause(self, pause: AccountPause | None) -> list[Command]:
        """Do as the database says: paused, disabled, or free to send."""
        if pause is None:
            was = self.disabled or self.paused_until is not None
            self.paused_until, self.disabled = None, False
            return [Log("info", "account.unpaused", {})] if was else []
        self.paused_until, self.disabled = pause.until, pause.until is None
        return [Log("info", "account.paused", {"until": pause_end_text(pause.until), "reason": pause.reason})]

    # -- timers ---------------------------------------------------------------------------------------

    def _note_future(self, at: datetime) -> list[Command]:
        if self._wake_at is None or at < self._wake_at:
            self._wake_at = at
        return self._arm(self._wake_at)

    def _arm(self, at: datetime | None) -> list[Command]:
        """Make sure a timer fires by `at` (one timer per account: the earliest wins)."""
        if at is None or (self._timer_at is not None and self._timer_at <= at):
            return []
        self._generation += 1
        self._timer_at = at
        return [ArmTimer(at, self._generation)]


def _given_back(message: Message, now: datetime) -> Transition:
    """A claimed attempt that did not count: the message due again now, its attempt uncounted."""
    status = Status.PENDING if message.attempts <= 1 else Status.RETRYING
    return Transition(message.id, message.attempts, status, now, available_at=now, give_back=True)


def _error_kind(error: str | None) -> str:
    """Only the exception's type name goes to the log: its text may quote the message."""
    return (error or "").split(":", 1)[0]
