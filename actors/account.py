"""The account actor: one per sending phone, one message in flight at a time.

Each step: claim the next due message (committed PROCESSING before the sender
sees it), call the sender, record the outcome (committed before the next claim),
then queue the next step behind whatever arrived meanwhile, so a new HIGH
message overtakes queued NORMAL and LOW ones.

A write is asked for by mail (`ask_by_mail`), and a send with a timeout runs on
the send pool (or the bot's loop) and reports back by mail (`SendDone`): while
either is under way the actor gives its turn and thread to other accounts and
takes only cheap mail (new messages, cancellations, timers); no step runs until
the answer arrives, so the next send still waits for the previous outcome to be
committed, and 10,000 accounts share a few threads however slow their senders.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import pykka

from actors._faults import crash_point, fault_point
from actors._mailbox import Answered, MailedReply, ask_by_mail, tell_if_alive
from actors.aio import Sender, is_coroutine_sender, submit_to_loop
from actors.clock import Clock, TimerHandle
from actors.dispatch import PooledActor
from actors.errors import SendTimeout
from actors.messages import (
    AccountFailed,
    AccountIdle,
    AccountPaused,
    Advance,
    Advanced,
    CheckPause,
    Deliver,
    Forget,
    Pump,
    SuspectSettled,
    Unpause,
    Wake,
)
from actors.ordering import SendOrder
from actors.pacing import Pacer, Pacing
from actors.pool import DaemonPool
from actors.privacy import describe_error, mask_phone
from actors.readers import ReaderPool
from actors.retry import BackoffPolicy, Next, RandomSource, decide
from actors.sending import SendPool, SendWatch
from postroom_common import AccountPause, Message, Status, StorageError, Transition, pause_end_text
from postroom_common.logs import get_logger
from storage import Storage


@dataclass(frozen=True, slots=True)
class AccountSettings:
    """How every account actor behaves."""

    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    """Retry delays and the cap on a rate limit's pause."""
    send_timeout: float | None = 60.0
    """Seconds a send may take; past that the outcome is unknown and it is retried. None: no limit,
    and the sender runs on the account's turn (no hand-over to the send pool), holding one of
    the supervisor's `account_threads` while it runs."""
    window: int = 64
    """Due messages held in memory per account; the rest stay in the database (10,000 accounts
    hold at most 640,000 in memory; a refill is one indexed read per window sent)."""
    storage_retry: float = 1.0
    """Seconds before retrying a database operation that failed."""
    idle_timeout: float | None = 30.0
    """Seconds with nothing due before the actor stops (its memory freed); None: never."""


@dataclass(frozen=True, slots=True)
class AccountDeps:
    """What an account actor talks to."""

    sender: Sender
    persistence: pykka.ActorRef[Any]
    supervisor: pykka.ActorRef[Any]
    storage: Storage
    readers: ReaderPool
    send_pool: SendPool
    """Where a sender runs when a send timeout is set."""
    deadlines: Clock
    """Real time, for send timeouts: a hung sender is given up on by the wall clock."""
    turns: DaemonPool
    """The threads every account actor takes its turns on."""
    clock: Clock
    rng: RandomSource
    settings: AccountSettings
    loop: asyncio.AbstractEventLoop | None = None
    """The bot's event loop, where a coroutine sender runs."""
    pacing: Pacing = field(default_factory=Pacing)
    """This account's rate and per-recipient interval."""
    watch: int | None = None
    """A suspect's id: this account runs alone until that message's outcome is recorded (or
    it cannot be sent now), then tells the supervisor `SuspectSettled` and sends nothing more."""
    sends: SendWatch = field(default_factory=SendWatch)
    """Where the account says when its send begins and ends (for `GetHealth`)."""


class AccountActor(PooledActor):
    """Owns one phone's queue; its turns run on the supervisor's account threads."""

    STOP_WAIT = 30.0
    """Seconds a stopping actor waits for the answer to a write in flight."""

    def __init__(self, phone: str, deps: AccountDeps) -> None:
        super().__init__(deps.turns)
        self.phone = phone
        self.deps = deps
        self.settings = deps.settings
        self.order = SendOrder(deps.settings.window)
        self.log = get_logger("postroom.account", account=mask_phone(phone))
        self._wake_at: datetime | None = None  # earliest future message known to be in the DB
        self._paused_until: datetime | None = None
        self._disabled = False  # suspended until a user lifts it: nothing is sent, no timer
        self._unrecorded: Transition | None = None  # an outcome whose write failed
        self._unrecorded_message: Message | None = None
        self._claimed: Message | None = None  # claimed with the last outcome, not yet sent
        self._in_hand: Message | None = None  # handed to the sender, outcome not yet recorded
        self._returned: _Returned | None = None  # how the send of `_in_hand` ended, once it has
        self._waiting: MailedReply | None = None  # a write in flight: no step until it is answered
        self._then: Callable[[Advanced], None] | None = None  # what to do with its answer
        self._waiting_candidate: Message | None = None  # the message it claims, if any
        self._sending: _Send | None = None  # a send under way off this actor's turn
        self._pause_loaded = False  # a pause persisted before a restart still holds
        self.pacer = Pacer(deps.pacing, deps.clock.monotonic())
        self._paced = False  # the last pick found work, but pacing made it wait
        self._limited_in_a_row = 0  # rate limits with no send going through between them
        self._timer: TimerHandle | None = None
        self._timer_at: datetime | None = None
        self._timer_generation = 0
        self._pump_queued = False
        self._idle_since: float | None = None
        self._deliveries_seen = 0
        self._watching = deps.watch is not None  # until the suspect is settled

    # -- pykka hooks -------------------------------------------------------------------

    def on_start(self) -> None:
        self.log.info("account.started")
        self._kick()

    def on_stop(self) -> None:
        self._release()
        self.log.info("account.stopped")

    def _release(self) -> None:
        """Hand back all this actor holds, stopping or crashed: a send in flight ends (within
        its timeout) and its outcome is recorded, a write in flight is answered, and a message
        claimed but never sent goes back with its attempt uncounted. Nothing stays PROCESSING."""
        self._settle_sending()
        self._settle_waiting()
        self._cancel_timer()
        self._settle_unrecorded()
        self._settle_in_hand()
        self._give_back_claimed()

    def _settle_sending(self) -> None:
        """A send still under way: wait for it (at most its timeout), then record its outcome."""
        send = self._sending
        if send is None:
            return
        timeout = self.settings.send_timeout
        left = None if timeout is None else max(0.0, send.started + timeout - self.deps.deadlines.monotonic())
        with contextlib.suppress(BaseException):  # the outcome is read below
            send.future.result(timeout=left)
        self._send_done(SendDone(send.future, timed_out=not send.future.done()), claim_next=False)

    def _settle_waiting(self) -> None:
        """A write still in flight: its answer will not be read from the inbox any more, so wait
        for it here, and a message it claimed is given back instead of left PROCESSING."""
        if self._waiting is None:
            return
        try:
            self._waiting.get(timeout=self.STOP_WAIT)
        except pykka.Timeout:
            self.log.warning("account.write_unanswered")  # the next boot settles what it claimed
            return
        except StorageError:
            pass  # `_answered` sees it too
        self._answered(self._waiting)

    def on_failure(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                   tb: TracebackType | None) -> None:
        name = exc_type.__name__ if exc_type else "unknown"
        self.log.error("account.crashed", error=name)
        try:
            self._release()  # postroom's own code failed: what the account held goes back
        except Exception as error:  # noqa: BLE001 - the report below must go out; the boot settles the rest
            self.log.error("account.release_failed", error=type(error).__name__)
        finally:
            self._tell_supervisor(AccountFailed(self.phone, self.actor_urn, name))

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Pump):
            self._pump_queued = False
            if self._waiting is None and self._sending is None:
                self._step()  # else the answer kicks again
        elif isinstance(message, Answered):
            if message.reply is self._waiting:
                self._answered(message.reply)
        elif isinstance(message, SendDone):
            self._send_done(message, claim_next=True)
        else:
            self._take(message)

    def ends_turn(self, message: Any) -> bool:
        # At most one send per turn: at a boot with 10,000 accounts each sends once before any sends twice.
        return isinstance(message, Pump | Answered | SendDone)

    def _take(self, message: Any) -> None:
        """Everything but Pump: cheap bookkeeping, safe to run between two sends."""
        match message:
            case Deliver(news):
                self._deliveries_seen += 1
                for new in news:
                    self._accept(new)
            case Forget(_, message_id):
                self.order.discard(message_id)
            case Pump():
                self._pump_queued = False  # read mid-step: it goes again, behind this step
                self._kick()
            case Unpause():
                self._paused_until, self._disabled = None, False
                self._kick()
            case CheckPause():
                self._pause_loaded = False  # the next step reads it with the next page
                self._kick()
            case Wake(generation):
                if generation == self._timer_generation:
                    self._timer, self._timer_at = None, None
                    self._kick()
            case SendBegan(future):
                if self._sending is not None and self._sending.future is future:
                    self._arm_send_timeout(self._sending)
            case SendDone() | Answered():
                pass  # read mid-step (`_read_mail`): the late twin of a report already settled
            case _:
                raise TypeError(f"account actor cannot handle {type(message).__name__}")

    def _read_mail(self) -> None:
        """Take what arrived during the send (a new HIGH message must be seen before the next pick)."""
        for request in self.actor_inbox.take_nowait(1000):
            self._take(request.message)

    # -- the send loop -------------------------------------------------------------------

    def _accept(self, message: Message) -> None:
        if message.available_at > self.deps.clock.now():
            self._note_future(message.available_at)
        elif self.order.offer(message):
            self._kick()

    def _step(self) -> None:
        now = self.deps.clock.now()
        if self.deps.watch is not None and not self._watching:
            return  # the suspect is settled: the supervisor stops this incarnation
        if not self._pause_loaded and not self._refill(now):  # the first load brings the pause
            return
        if self._unrecorded is not None:
            self._flush_unrecorded(claim_next=False)  # a write that failed: again, alone
            return
        if self._disabled:
            self._give_back_claimed()
            self._settle_suspect()  # it cannot be sent now: no use holding every other account
            self._rest(now)  # it may stop when idle; a restart reads the suspension back
            return
        if self._paused_until is not None and now < self._paused_until:
            self._give_back_claimed()
            self._settle_suspect()
            self._arm(self._paused_until)
            return
        self._paused_until = None
        message, self._claimed = self._claimed, None
        if message is None:
            self._claim_next(now)  # the answer kicks the step that sends it
            return
        self._idle_since = None
        crash_point("claim.committed")
        self._in_hand, self._returned = message, None
        self._send(message)

    def _sent(self, message: Message, error: BaseException | None, claim_next: bool) -> None:
        """The send is over: record its outcome (with the next claim) before anything else is sent."""
        self._returned = _Returned(error)
        self.deps.sends.ended(self.phone)
        self.pacer.sent(message.user_id, self.deps.clock.monotonic())
        self._unrecorded = self._outcome(message, error)
        self._unrecorded_message = message
        self._read_mail()
        self._flush_unrecorded(claim_next=claim_next)

    def _claim_next(self, now: datetime) -> None:
        candidate = self._next_due(now)
        if candidate is None:
            if not self._paced:
                self._rest(now)
            self._paced = False
            return

        def claimed(answer: Advanced) -> None:
            # None: cancelled or finished since it was loaded; the next step tries the next one.
            self._claimed = answer.claimed.get(candidate.id)
            fault_point("account.claimed")
            self._go_on()

        self._advance(Advance(claim=(candidate.id,)), candidate, claimed)

    def _advance(self, request: Advance, candidate: Message | None, then: Callable[[Advanced], None]) -> None:
        """Ask the persistence actor by mail; `then(answer)` runs when the commit is answered."""
        self._waiting = ask_by_mail(self.deps.persistence, request, self.actor_ref)
        self._then, self._waiting_candidate = then, candidate

    def _answered(self, reply: MailedReply) -> None:
        """The write asked for is answered; on a database error keep everything for a retry."""
        then, candidate = self._then, self._waiting_candidate
        self._waiting = self._then = self._waiting_candidate = None
        assert then is not None
        try:
            answer: Advanced = reply.get(timeout=0)
        except StorageError as error:
            if candidate is not None:
                self.order.push_back(candidate)
            self.log.warning("account.write_failed", error=str(error))
            self._arm(self.deps.clock.now() + timedelta(seconds=self.settings.storage_retry))
            return
        then(answer)

    def _next_due(self, now: datetime) -> Message | None:
        if self._wake_at is not None and self._wake_at <= now:
            self._wake_at = None
            self.order.invalidate()  # something fell due in the DB: reload in full order
        if not len(self.order) and not self.order.complete and not self._refill(now):
            return None
        return self._paced_pop(now)

    def _paced_pop(self, now: datetime) -> Message | None:
        """The next message pacing allows; if pacing holds work back, a timer for it."""
        mono = self.deps.clock.monotonic()
        wait = self.pacer.token_wait(mono)
        if wait == 0.0:
            message = self.order.pop_first(
                lambda m: self.pacer.recipient_wait(m.user_id, mono) == 0.0)
            if message is not None or not len(self.order):
                return message
            wait = min(self.pacer.recipient_wait(m.user_id, mono) for m in self.order.messages())
        self._paced = True
        self._arm(now + timedelta(seconds=wait))
        return None

    def _refill(self, now: datetime) -> bool:
        try:
            view = self.deps.readers.run(self.deps.storage.account_view, self.phone, now,
                                         self.order.page)
        except StorageError as error:
            self.log.warning("account.read_failed", error=str(error))
            self._arm(now + timedelta(seconds=self.settings.storage_retry))
            return False
        if not self._pause_loaded:
            # Later pauses are this actor's own outcomes: only a start, or a pause lifted by
            # another process (CheckPause), must read one back.
            self._pause_loaded = True
            self._adopt_pause(view.pause)
        self.order.replace(view.due)
        if view.next_due_at is not None:
            self._note_future(view.next_due_at)
        return True

    def _adopt_pause(self, pause: AccountPause | None) -> None:
        """Do as the database says: paused, disabled, or free to send."""
        if pause is None:
            if self._disabled or self._paused_until is not None:
                self.log.info("account.unpaused")
            self._paused_until, self._disabled = None, False
            return
        self._paused_until, self._disabled = pause.until, pause.until is None
        self.log.info("account.paused", until=pause_end_text(pause.until), reason=pause.reason)

    def _settle_suspect(self) -> None:
        """Done with the suspect this account was started for (sent, or not sendable now)."""
        if self._watching:
            self._watching = False
            self._tell_supervisor(SuspectSettled(self.phone, self.actor_urn))

    def _rest(self, now: datetime) -> None:
        """Nothing due: wait for the next timer, or stop if idle for long enough."""
        self._settle_suspect()  # nothing due, so the suspect is not (cancelled, or not due)
        self._arm(self._wake_at)
        idle = self.settings.idle_timeout
        if idle is None:
            return
        mono = self.deps.clock.monotonic()
        if self._idle_since is None:
            self._idle_since = mono
        if mono - self._idle_since >= idle:
            # The supervisor decides: it stops us only if it routed us nothing since.
            self._tell_supervisor(AccountIdle(self.phone, self.actor_urn, self._wake_at,
                                              self._deliveries_seen))
            self._idle_since = mono
            return
        idle_check = now + timedelta(seconds=idle - (mono - self._idle_since))
        self._arm(min(idle_check, self._wake_at) if self._wake_at else idle_check)

    def _send(self, message: Message) -> None:
        """Hand the message to the sender; whatever it raises (SystemExit too) is an outcome."""
        fault_point("account.before_send")
        timeout = self.settings.send_timeout
        self.deps.sends.started(self.phone, self.deps.deadlines.monotonic())
        if self.deps.loop is not None and is_coroutine_sender(self.deps.sender):
            try:
                future = submit_to_loop(self.deps.sender, message, self.deps.loop)
            except RuntimeError as error:  # the loop is closed: the bot is stopping
                self._sent(message, error, claim_next=True)
                return
        elif timeout is None:
            try:
                self.deps.sender(message)  # on this turn's thread: nothing can give up on it
            except BaseException as error:  # noqa: BLE001 - a sender must not kill the actor system
                self._sent(message, error, claim_next=True)
                return
            self._sent(message, None, claim_next=True)
            return
        else:
            ref = self.actor_ref
            try:
                future = self.deps.send_pool.submit(
                    self.deps.sender, message, on_begin=lambda begun: tell_if_alive(ref, SendBegan(begun)))
            except RuntimeError as error:  # no thread could be started (a process limit)
                self._defer_send(message, error)
                return
        pooled = self.deps.loop is None or not is_coroutine_sender(self.deps.sender)
        self._sending = send = _Send(message, future, self.deps.deadlines.monotonic(), pooled)
        ref = self.actor_ref
        future.add_done_callback(lambda done: tell_if_alive(ref, SendDone(done, timed_out=False)))
        if not pooled:
            self._arm_send_timeout(send)  # on the bot's loop it begins at once

    def _arm_send_timeout(self, send: _Send) -> None:
        """The send has begun (a pooled one may have waited for a thread): its time runs."""
        if self.settings.send_timeout is None or send.timer is not None:
            return
        ref, future = self.actor_ref, send.future
        send.started = self.deps.deadlines.monotonic()
        send.timer = self.deps.deadlines.call_later(
            self.settings.send_timeout, lambda: tell_if_alive(ref, SendDone(future, timed_out=True)))

    def _call_off(self, send: _Send) -> bool:
        """Stopping with a send that never began (it waits for a thread of the capped send
        pool): it is called off, and the message given back uncounted. False if it began."""
        if not send.future.cancel():
            return False
        self._sending = self._in_hand = None
        self._claimed = send.message  # the rest of the release gives it back
        self.deps.sends.ended(self.phone)
        return True

    def _defer_send(self, message: Message, error: RuntimeError) -> None:
        """The send could not start for want of a thread: the claim is kept (its attempt is
        this one, not a new one) and the send tried again a little later."""
        self.deps.sends.ended(self.phone)
        self._in_hand, self._claimed = None, message
        self.log.warning("account.send_deferred", message_id=message.id, error=str(error))
        self._arm(self.deps.clock.now() + timedelta(seconds=self.settings.storage_retry))

    def _send_done(self, done: SendDone, claim_next: bool) -> None:
        send = self._sending
        if send is None or done.future is not send.future:
            return  # the other report of a send already settled (its timeout, or its late return)
        if done.timed_out and send.waiting_for_a_thread and self._call_off(send):
            return
        if send.timer is not None:
            send.timer.cancel()
        error: BaseException | None
        if done.timed_out and not send.future.done():
            send.future.cancel()  # a coroutine is cancelled; a thread is left to its sender
            kind = "coroutine sender" if self.deps.loop is not None else "sender"
            error = SendTimeout(f"no answer from the {kind} within {self.settings.send_timeout} s")
        elif send.future.cancelled():
            error = RuntimeError("the send was cancelled (the bot's loop is stopping)")
        else:
            error = send.future.exception()
        self._returned, self._sending = _Returned(error), None  # known before anything can fail
        fault_point("account.send_done")
        self._sent(send.message, error, claim_next)

    def _outcome(self, message: Message, error: BaseException | None) -> Transition:
        fault_point("account.outcome")
        now = self.deps.clock.now()
        if error is None:
            self._limited_in_a_row = 0
            return Transition(message.id, message.attempts, Status.COMPLETED, now)
        policy = self.settings.backoff
        decision = decide(error, message.attempts, message.max_attempts, now, policy, self.deps.rng,
                          limited_in_a_row=self._limited_in_a_row + 1)
        self._limited_in_a_row = self._limited_in_a_row + 1 if decision.next is Next.PAUSE else 0
        text = describe_error(error, message)
        if decision.next is Next.RETRY:
            return Transition(message.id, message.attempts, Status.RETRYING, now, text, decision.at)
        if decision.next is Next.FAIL:
            return Transition(message.id, message.attempts, Status.FAILED, now, text)
        # "pause" or "disable": the account stops, the message keeps its place and its attempts.
        given_back = Status.PENDING if message.attempts <= 1 else Status.RETRYING
        return Transition(message.id, message.attempts, given_back, now, text, decision.at,
                          give_back=True)

    def _flush_unrecorded(self, claim_next: bool) -> None:
        """Write the pending outcome, with the claim of the next message if one is due.

        Until the outcome is committed nothing else is sent.
        """
        transition, message = self._unrecorded, self._unrecorded_message
        assert transition is not None and message is not None
        now = self.deps.clock.now()
        suspect = transition.id == self.deps.watch
        candidate = self._next_due(now) if claim_next and not transition.give_back and not suspect else None
        self._paced = False  # a paced pick armed its timer; the step goes on recording
        claim = (candidate.id,) if candidate is not None else ()
        record, pause = transition, None
        if transition.give_back:
            # The account row holds the pause (it survives a restart and a user can lift it);
            # the message itself stays due, in its place. No end (None): disabled until lifted.
            pause = AccountPause(self.phone, transition.available_at, _error_kind(transition.error))
            record = replace(transition, available_at=None)

        def recorded(answer: Advanced) -> None:
            self._unrecorded = self._unrecorded_message = None
            self._in_hand = self._returned = None
            if candidate is not None:
                self._claimed = answer.claimed.get(candidate.id)
            if transition.status is Status.COMPLETED:
                crash_point("record.completed")
            self._after_record(transition, message, transition.id in answer.recorded)
            if suspect:
                self._settle_suspect()
            fault_point("account.recorded")
            self._go_on()

        self._advance(Advance(record=(record,), claim=claim, pause=pause), candidate, recorded)

    def _give_back_claimed(self) -> None:
        """A message claimed but not sent (stopping, or paused) goes back, its attempt uncounted."""
        message, self._claimed = self._claimed, None
        if message is not None:
            self._write_now(_given_back(message, self.deps.clock.now()))

    def _settle_unrecorded(self) -> None:
        """An outcome known but not committed (its write failed, or was never asked for)."""
        if self._unrecorded is not None and self._waiting is None:
            transition, self._unrecorded = self._unrecorded, None
            if self._write_now(transition):
                self._in_hand = self._returned = None

    def _settle_in_hand(self) -> None:
        """After a crash between the claim and the record: a message never handed to the
        sender goes back uncounted; one whose send ended is recorded by how it ended (a
        return is a delivery), with no policy that could fail again."""
        message, self._in_hand = self._in_hand, None
        if message is None or self._sending is not None:
            return
        now, returned = self.deps.clock.now(), self._returned
        if returned is None:
            self._write_now(_given_back(message, now))
        elif returned.error is None:
            self._write_now(Transition(message.id, message.attempts, Status.COMPLETED, now))
        else:
            final = message.attempts >= message.max_attempts
            self._write_now(Transition(message.id, message.attempts,
                                       Status.FAILED if final else Status.RETRYING, now,
                                       describe_error(returned.error, message), None if final else now))

    def _write_now(self, transition: Transition) -> bool:
        """Record at once, waiting for the commit (stopping or crashed: no mail will be read)."""
        try:
            self.deps.persistence.ask(Advance(record=(transition,)), block=True, timeout=self.STOP_WAIT)
        except (StorageError, pykka.ActorDeadError, pykka.Timeout) as error:
            # Left PROCESSING: recovery settles it (the supervisor's, or the next boot's).
            self.log.warning("account.write_failed_at_release", message_id=transition.id,
                             error=str(error))
            return False
        return True

    def _after_record(self, t: Transition, message: Message, applied: bool) -> None:
        log, ids = self.log, {"message_id": t.id, "attempt": t.attempt}  # no bind: it copies per message
        if not applied:
            log.warning("message.stale_outcome", status=t.status.value, **ids)
        elif t.status is Status.COMPLETED:
            log.info("message.sent", **ids)
        elif t.status is Status.FAILED:
            log.warning("message.failed", error=_error_kind(t.error), **ids)
        elif t.give_back and t.available_at is None:
            self._disabled = True
            self._tell_supervisor(AccountPaused(self.phone, None))
            log.error("account.disabled", until=pause_end_text(None), error=_error_kind(t.error), **ids)
        elif t.give_back:
            assert t.available_at is not None
            self._paused_until = t.available_at
            self._note_future(t.available_at)
            self._tell_supervisor(AccountPaused(self.phone, t.available_at))
            suspended = _error_kind(t.error) == "AccountSuspended"
            log.warning("account.suspended" if suspended else "account.rate_limited",
                        until=pause_end_text(t.available_at), **ids)
        else:
            assert t.available_at is not None
            self._note_future(t.available_at)
            log.info("message.retrying", at=t.available_at.isoformat(), error=_error_kind(t.error), **ids)

    # -- timers ------------------------------------------------------------------------

    def _note_future(self, at: datetime) -> None:
        if self._wake_at is None or at < self._wake_at:
            self._wake_at = at
        self._arm(self._wake_at)

    def _arm(self, at: datetime | None) -> None:
        """Make sure a Wake arrives by `at` (one timer per account; the earliest wins)."""
        if at is None or (self._timer_at is not None and self._timer_at <= at):
            return
        self._cancel_timer()
        self._timer_generation += 1
        generation, ref = self._timer_generation, self.actor_ref
        delay = (at - self.deps.clock.now()).total_seconds()
        self._timer_at = at
        self._timer = self.deps.clock.call_later(delay, lambda: tell_if_alive(ref, Wake(generation)))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, None

    def _go_on(self) -> None:
        """After an answer: send a claimed message now (not after a trip through the inbox), else
        queue the next step. A stopping actor (settling the answer in on_stop) sends nothing more:
        `on_stop` gives the claimed message back."""
        if self._claimed is not None and not self.actor_stopped.is_set():
            self._step()
        else:
            self._kick()

    def _kick(self) -> None:
        if not self._pump_queued:
            self._pump_queued = True
            tell_if_alive(self.actor_ref, Pump())  # stopping: an answer settled in on_stop kicks too

    def _tell_supervisor(self, message: Any) -> None:
        tell_if_alive(self.deps.supervisor, message)


def _given_back(message: Message, now: datetime) -> Transition:
    """A claimed message that was never sent, due again now with its attempt uncounted."""
    status = Status.PENDING if message.attempts <= 1 else Status.RETRYING
    return Transition(message.id, message.attempts, status, now, available_at=now, give_back=True)


@dataclass(frozen=True, slots=True)
class _Returned:
    """How a send ended: returned (no error), or raised."""

    error: BaseException | None


@dataclass(slots=True)
class _Send:
    """A send under way on the send pool or the bot's loop."""

    message: Message
    future: concurrent.futures.Future[Any]
    started: float  # deadlines.monotonic()
    pooled: bool  # on the send pool, where it may wait for a thread before it begins
    timer: TimerHandle | None = None

    @property
    def waiting_for_a_thread(self) -> bool:
        return self.pooled and not self.future.running() and not self.future.done()


@dataclass(frozen=True, slots=True)
class SendBegan:
    """Mail to the account: its send left the queue of the send pool and runs now."""

    future: concurrent.futures.Future[Any]


@dataclass(frozen=True, slots=True)
class SendDone:
    """Mail to the account: its send returned or raised, or (timed_out) its time is up."""

    future: concurrent.futures.Future[Any]
    timed_out: bool


def _error_kind(error: str | None) -> str:
    """Only the exception's type name goes to the log: its text may quote the message."""
    return (error or "").split(":", 1)[0]
