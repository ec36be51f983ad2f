"""The account actor: one per sending phone, the shell around its `AccountMachine`.

Everything the account decides is in `actors/account_machine.py`; this actor only
delivers events to the machine (mail from the writer and the supervisor, the end of a
send, a timer, a read) and carries out the commands it returns: a read of the
window runs on the runtime's threads, off this actor's turn; a write is asked of the
writer, whose answer comes back as mail; the send of a claimed message is started
by the writer after the commit (`SendTicket`); a timer is armed on the clock.

Releasing gives back what the account holds, by mail, never by waiting inside a turn
(the writer and the other accounts need the runtime's threads): a graceful stop
(`Release`, from the supervisor) lets the send in flight end and records it, then the
account stops and reports `AccountReleased`. A crash does the same: the account
outlives the failure of its turn (`outlive`), reports `AccountCrashed` at once, takes
in only the mail that ends what it held (the writer's answers, the end of its send),
and reports `AccountReleased` once released, or after `RELEASE_WAIT` (what it still
holds is then settled by acquiring); the supervisor starts it again only after that.
A stop by pykka alone (every actor stopped at once) waits for nothing: what is still
out is left for acquiring to settle.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

import pykka

from actors._faults import fault_point, faults_armed
from actors.account_machine import (
    AccountMachine,
    AccountSettings,
    ArmTimer,
    At,
    Command,
    Log,
    ReadWindow,
    ReportIdle,
    ReportPaused,
    ReportReleased,
    ReportSuspectSettled,
    WriteAndClaim,
)
from actors.aio import Sender
from actors.clock import Clock, TimerHandle
from actors.messages import (
    AccountCrashed,
    AccountIdle,
    AccountPaused,
    AccountReleased,
    Arrived,
    Cancelled,
    PauseLifted,
    ReadPauseAgain,
    RecordAndClaim,
    Recorded,
    Release,
    SuspectSettled,
)
from actors.metrics import Metrics
from actors.pacing import Pacing
from actors.privacy import mask_phone
from actors.retry import RandomSource
from actors.runtime import Answer, Reply, TurnActor, TurnPool, tell_if_alive
from actors.sending import SendEnded, SendNotBegun, SendPool, SendTicket, SendWatch
from postroom_common import AccountView, Delivery, StorageError
from postroom_common.logs import get_logger
from storage import Storage

__all__ = ["AccountActor", "AccountDeps", "AccountSettings"]


@dataclass(frozen=True, slots=True)
class AccountDeps:
    """What an account actor talks to."""

    sender: Sender
    """The user's sender (plain or `async def`)."""
    persistence: pykka.ActorRef[Any]
    """The writer."""
    supervisor: pykka.ActorRef[Any]
    storage: Storage
    """For reads of the window (on the runtime's threads)."""
    pool: TurnPool
    """The runtime's threads."""
    send_pool: SendPool
    """Where plain senders run."""
    deadlines: Clock
    """Real time, for send timeouts: a hung sender is given up on by the wall clock."""
    clock: Clock
    rng: RandomSource
    settings: AccountSettings
    delivery: Delivery = Delivery.AT_LEAST_ONCE
    """What acquiring does with an earlier owner's in-flight rows."""
    loop: asyncio.AbstractEventLoop | None = None
    """The bot's event loop, where a coroutine sender runs."""
    pacing: Pacing = field(default_factory=Pacing)
    """This account's rate and per-recipient interval."""
    sends: SendWatch = field(default_factory=SendWatch)
    """Where sends under way are noted (for `GetHealth`)."""
    metrics: Metrics | None = None
    """Where sends are timed (None: they are not)."""


@dataclass(frozen=True, slots=True)
class _WindowRead:
    """A read of the window ended: the view, or the error."""

    view: AccountView | StorageError


@dataclass(frozen=True, slots=True)
class _TimerFired:
    generation: int


@dataclass(frozen=True, slots=True)
class _GiveUp:
    """A crashed account has waited `RELEASE_WAIT` for what ends what it held."""


#: The mail that tells how what the account holds ends: a crashed account takes in only these.
_NEWS = (Answer, _WindowRead, SendEnded, SendNotBegun)


class AccountActor(TurnActor):
    """Owns one phone's queue (see the module's docstring)."""

    RELEASE_WAIT = 30.0
    """Seconds a crashed account waits for the mail that ends what it held before it gives up."""
    # Reads run ahead of the turns (at a boot, thousands are queued): the turn that takes a
    # window in goes ahead too, so the first claims do not wait for every account's read.
    urgent_mail = frozenset({_WindowRead})

    def __init__(self, pool: TurnPool, phone: str, deps: AccountDeps, *, recover: bool = False,
                 watch: int | None = None) -> None:
        super().__init__(pool)
        self.phone = phone
        self.deps = deps
        self.log = get_logger("postroom.account", account=mask_phone(phone))
        self.machine = AccountMachine(phone, deps.settings, deps.pacing, deps.rng, self._at(), watch)
        self._recover = recover
        self._writes = 0  # the token of the last write asked of the writer
        self._write_out = False  # that write's answer is still to come
        self._handling: Any = None  # the mail this turn is feeding to the machine
        self._ticket: SendTicket | None = None
        self._timer: TimerHandle | None = None
        self._crash: str | None = None  # the failure it outlives, giving back what it held
        self._give_up: TimerHandle | None = None

    # -- pykka's hooks ------------------------------------------------------------------------

    def on_start(self) -> None:
        self.log.info("account.started")
        self._carry_out(self.machine.acquire(self._at(), recover=self._recover))

    def on_stop(self) -> None:
        self._cancel_timers()
        if not self.machine.released and self._crash is None:
            self._give_back_now()  # stopped by pykka alone: no mail will come to finish it
        self._tell_supervisor(AccountReleased(self.phone, self.actor_urn))
        self.log.info("account.stopped")

    def outlive(self, error: Exception) -> bool:
        """A turn failed: release, by mail if what it held is still out (the end of its send,
        the writer's answers), then stop. Failing again meanwhile, it stops at once."""
        if self._crash is not None:
            self.log.error("account.release_failed", error=type(error).__name__)
            return False
        self._crash = type(error).__name__
        self.log.error("account.crashed", error=self._crash)
        interrupted, self._handling = self._handling, None
        try:
            self._begin_release(interrupted)
        except Exception as failure:  # noqa: BLE001 - stopped below; acquiring settles the rest
            self.log.error("account.release_failed", error=type(failure).__name__)
            return False
        if self.machine.released:
            return False  # nothing held: gone at once, `on_failure` reports it
        self._tell_supervisor(AccountCrashed(self.phone, self.actor_urn, self._crash, releasing=True))
        ref = self.actor_ref
        self._give_up = self.deps.deadlines.call_later(self.RELEASE_WAIT,
                                                       lambda: tell_if_alive(ref, _GiveUp()))
        return True

    def on_failure(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                   tb: TracebackType | None) -> None:
        self._cancel_timers()
        if self._give_up is not None:  # its crash was reported as releasing: it failed again since
            self._tell_supervisor(AccountReleased(self.phone, self.actor_urn))
            return
        name = self._crash or (exc_type.__name__ if exc_type else "unknown")
        self._tell_supervisor(AccountCrashed(self.phone, self.actor_urn, name))

    # -- events -------------------------------------------------------------------------------

    def receive(self, message: Any, reply: Reply | None) -> None:
        if self._crash is not None:
            self._carry_out(self._while_crashed(message))
            return
        self._handling = message
        if faults_armed():
            fault_point(_step(message))
        commands = self._event(message)
        self._handling = None  # taken in: a crash from here on does not feed it again
        self._carry_out(commands)

    def _event(self, message: Any) -> list[Command]:
        """The machine's answer to one message."""
        at, machine = self._at(), self.machine
        match message:
            case Arrived(messages):
                return machine.arrived(messages, at)
            case Answer(token) if token == self._writes:
                self._write_out = False
                return self._written(message, at)
            case Answer():
                return []  # the answer to a write a crash gave up on
            case _WindowRead(StorageError() as error):
                return machine.read_failed(str(error), at)
            case _WindowRead(view):
                return machine.loaded(view, at)  # type: ignore[arg-type]
            case SendEnded(ticket) if ticket is self._ticket:
                self._ticket = None
                return machine.send_ended(ticket.outcome(), at)
            case SendNotBegun(ticket, error) if ticket is self._ticket:
                self._ticket = None
                return machine.send_not_begun(error, at)
            case SendEnded() | SendNotBegun():
                return []  # the second report of a send already settled (its timeout, its late end)
            case _TimerFired(generation):
                return machine.timer_fired(generation, at)
            case Cancelled(message_id):
                return machine.forget(message_id)
            case PauseLifted():
                return machine.unpause(at)
            case ReadPauseAgain():
                return machine.check_pause(at)
            case Release():
                return self._release(at)
        raise TypeError(f"account actor cannot handle {type(message).__name__}")

    def _written(self, answer: Answer, at: At) -> list[Command]:
        if answer.error is not None:
            self._ticket = None  # the writer starts no send for a write that failed
            if not isinstance(answer.error, StorageError | pykka.ActorDeadError):
                raise answer.error  # a bug of the writer's: this account crashes and is restarted
            return self.machine.write_failed(str(answer.error), at)
        recorded: Recorded = answer.value
        if recorded.claimed is None:
            self._ticket = None  # nothing was claimed: no send was started
        if recorded.fenced:
            return self.machine.fenced(recorded.applied, at)
        return self.machine.written(recorded.applied, recorded.claimed, at)

    def _release(self, at: At) -> list[Command]:
        if self._ticket is not None:
            self._ticket.call_off()  # a send not yet begun never begins: `SendNotBegun` follows
        return self.machine.release(at)

    # -- commands -------------------------------------------------------------------------------

    def _carry_out(self, commands: list[Command]) -> None:
        for command in commands:
            match command:
                case WriteAndClaim():
                    self._write(command)
                case ReadWindow(page):
                    self._read(page)
                case ArmTimer(at, generation):
                    self._arm(at, generation)
                case Log(level, event, fields):
                    if self.log.enabled(_LEVELS[level]):
                        getattr(self.log, level)(event, **fields)
                case ReportIdle(wake_at, seen):
                    self._tell_supervisor(AccountIdle(self.phone, self.actor_urn, wake_at, seen))
                case ReportPaused(until):
                    self._tell_supervisor(AccountPaused(self.phone, until))
                case ReportSuspectSettled():
                    self._tell_supervisor(SuspectSettled(self.phone, self.actor_urn))
                case ReportReleased():
                    self._stop_released()

    def _write(self, write: WriteAndClaim) -> None:
        fault_point("account.claiming" if write.claim is not None else "account.recording")
        deps = self.deps
        ticket = None
        if write.claim is not None:
            ticket = SendTicket(self.actor_ref, deps.sender, deps.send_pool, deps.loop, deps.deadlines,
                                deps.settings.send_timeout, deps.sends, self.phone,
                                None if deps.metrics is None else deps.metrics.send_took)
        self._ticket = ticket
        self._writes += 1
        request = RecordAndClaim(
            self.phone, record=write.record, pause=write.pause, send=ticket,
            claim=None if write.claim is None else write.claim.id,
            reclaim=self.phone if write.reclaim else None,
            settle=(deps.delivery, self.phone) if write.recover else None)
        self._write_out = True
        try:
            self.ask_actor(deps.persistence, request, self._writes)
        except pykka.ActorDeadError:  # the writer is gone: the supervisor is stopping
            tell_if_alive(self.actor_ref, Answer(self._writes, error=pykka.ActorDeadError("writer")))

    def _read(self, page: int) -> None:
        storage, phone, ref, now = self.deps.storage, self.phone, self.actor_ref, self.deps.clock.now()

        def read() -> None:
            try:
                view: AccountView | StorageError = storage.account_view(phone, now, page)
            except StorageError as error:
                view = error
            tell_if_alive(ref, _WindowRead(view))

        # Ahead of the turns: at a boot, every account reads its window before any sends twice.
        self.run_job(read, urgent=True)

    def _arm(self, at: datetime, generation: int) -> None:
        """The machine's one timer, for an instant of the wall clock, so that a step of it moves
        the wait for a schedule, a retry or a pause's end; the machine's other waits at worst
        wake early (pacing and the idle check count on the monotonic clock and wait again)."""
        self._cancel_timer()
        ref = self.actor_ref
        self._timer = self.deps.clock.call_at(at, lambda: tell_if_alive(ref, _TimerFired(generation)))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tell_supervisor(self, message: Any) -> None:
        tell_if_alive(self.deps.supervisor, message)

    def _at(self) -> At:
        return At(self.deps.clock.now(), self.deps.clock.monotonic())

    # -- releasing after a crash, or a stop by pykka alone --------------------------------------

    def _begin_release(self, interrupted: Any) -> None:
        """Release now, as far as this turn can: what comes after is mail (`_while_crashed`).

        After a crash, `interrupted` is the mail the failed turn had not yet fed to the machine
        (the answer to its claim, the end of its send): it is fed now, once, so that what it
        reports is recorded; a write the machine asked for but the crash kept from going out
        counts as failed (`write_not_sent`).
        """
        self._cancel_timer()
        if self.machine.released:
            return
        at = self._at()
        commands = self.machine.release(at)  # first: what is fed below claims nothing more
        if isinstance(interrupted, _NEWS):
            commands += self._replay(interrupted)
        if self.machine.awaits_write and not self._write_out:
            commands += self.machine.write_not_sent(at)
        if self._ticket is not None:
            self._ticket.call_off()
        self._carry_out(commands)

    def _replay(self, interrupted: Any) -> list[Command]:
        try:
            return self._event(interrupted)
        except Exception as error:  # noqa: BLE001 - the machine itself failed on it: acquiring settles it
            self.log.error("account.replay_failed", mail=type(interrupted).__name__,
                           error=type(error).__name__)
            return []

    def _while_crashed(self, message: Any) -> list[Command]:
        """Crashed: only what ends what it held is taken in; no new work, no timers."""
        if isinstance(message, _GiveUp):
            self.log.warning("account.release_incomplete", held=self.machine.held)
            self.stop()  # left PROCESSING: acquiring (the restart, the next boot) settles it
            return []
        return self._event(message) if isinstance(message, _NEWS) else []

    def _give_back_now(self) -> None:
        """Stopped by pykka without `Release`: hand out what can be (a send not begun is called
        off, an outcome still to write goes to the writer); the rest waits for acquiring."""
        try:
            self._begin_release(None)
        except Exception as error:  # noqa: BLE001 - stopping all the same; acquiring settles the rest
            self.log.error("account.release_failed", error=type(error).__name__)
        if not self.machine.released:
            self.log.warning("account.release_incomplete", held=self.machine.held)

    def _stop_released(self) -> None:
        """Released: stop once this message is handled; `on_stop` reports it."""
        self._cancel_timers()
        if not self.actor_stopped.is_set():
            self.stop()

    def _cancel_timers(self) -> None:
        """The machine's timer, and a crashed account's wait to give up."""
        self._cancel_timer()
        if self._give_up is not None:
            self._give_up.cancel()


#: A `Log` command's level, as `logging` numbers it.
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "exception": logging.ERROR}


def _step(mail: Any) -> str:
    """The name of the fault point a test arms to crash the account as it takes in `mail`."""
    match mail:
        case Answer(value=Recorded(claimed=claimed)) if claimed is not None:
            return "account.claimed"
        case Answer():
            return "account.recorded"
        case SendEnded():
            return "account.send_ended"
        case _WindowRead():
            return "account.read"
    return "account.mail"
