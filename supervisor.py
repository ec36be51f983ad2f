"""The Supervisor actor: the one door in, and the owner of every account actor.

    ref = Supervisor.start(database="sqlite:///postroom.db", sender=send)
    message_id = ref.ask(Enqueue(phone="+15550001", user_id="42", text="hi"))
    ref.stop()

Start order: open the database (in the caller's thread, so a bad URL or a locked
file raises from `start()`), the persistence actor, recovery of rows a crash left
`processing`, then one account actor per phone with open work. Stop order is the
reverse: accounts (each finishes its in-flight send and records it), then the
persistence actor (which commits what it holds), then the database.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import heapq
import math
import os
import random
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from postroom_common import require_postroom_names

require_postroom_names("actors", "storage")  # before importing them: a clear error if taken

import pykka

from actors import (
    AccountActor,
    AccountDeps,
    AccountFailed,
    AccountIdle,
    AccountPaused,
    AccountSettings,
    AccountSuspended,
    BackoffPolicy,
    Broadcast,
    Cancel,
    CancelMessage,
    CheckDrains,
    CheckPause,
    CheckPauses,
    Cleanup,
    CleanupNow,
    Clock,
    Committed,
    Deliver,
    Drain,
    Enqueue,
    EnqueueBatch,
    FakeClock,
    Forget,
    GetHealth,
    GetMessage,
    GetStats,
    Health,
    HealthState,
    Inserted,
    LiftPause,
    Limits,
    ListMessages,
    OpenCounted,
    PausesRead,
    PermanentError,
    Persist,
    PersistenceActor,
    RandomSource,
    RateLimited,
    ReaderPool,
    Recover,
    Request,
    Requeue,
    RequeueMessage,
    ResumeAccount,
    RunCleanup,
    Sender,
    SenderReturnedAwaitable,
    SendError,
    SendTimeout,
    SuspectSettled,
    SystemClock,
    TransientError,
    Unpause,
    WakeAccounts,
    classify,
    mask_phone,
    sender_with_adapters,
    validate_broadcast,
    validate_enqueue,
    validate_enqueues,
)
from actors._faults import crash_point
from actors._mailbox import DeferredReplyActor, log_unanswered, tell_if_alive
from actors.aio import AsyncSender, ask_async, is_coroutine_sender, running_awaitables
from actors.door import Door, SupervisorInbox
from actors.pacing import Pacing
from actors.pool import DaemonPool
from actors.sending import SendPool, SendWatch
from actors.watches import DrainWaiters, PauseWatch
from postroom_common import (
    AccountPause,
    DatabaseLocked,
    DatabaseNotFound,
    Delivery,
    IdempotencyConflict,
    InvalidTransition,
    Message,
    MessageNotFound,
    NewMessage,
    OwnershipLost,
    PostroomError,
    Priority,
    QueueStats,
    Status,
    StorageError,
    SupervisorStopped,
    ValidationError,
)
from postroom_common.logs import get_logger
from storage import OwnerLock, SqliteSettings, Storage, open_database

__all__ = [
    "AccountSettings",
    "AccountSuspended",
    "AsyncPostroom",
    "AsyncSender",
    "BackoffPolicy",
    "Broadcast",
    "CancelMessage",
    "CleanupNow",
    "DatabaseLocked",
    "DatabaseNotFound",
    "Delivery",
    "Drain",
    "Enqueue",
    "EnqueueBatch",
    "FakeClock",
    "GetHealth",
    "GetMessage",
    "GetStats",
    "Health",
    "IdempotencyConflict",
    "InvalidTransition",
    "Limits",
    "ListMessages",
    "Message",
    "MessageNotFound",
    "OwnershipLost",
    "Pacing",
    "PermanentError",
    "PostroomError",
    "Priority",
    "QueueStats",
    "RateLimited",
    "RequeueMessage",
    "ResumeAccount",
    "SendError",
    "SendTimeout",
    "Sender",
    "SenderReturnedAwaitable",
    "SqliteSettings",
    "Status",
    "StorageError",
    "Supervisor",
    "SupervisorSettings",
    "SupervisorStopped",
    "SystemClock",
    "TransientError",
    "ValidationError",
    "classify",
    "sender_with_adapters",
]

log = get_logger("postroom.supervisor")


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    """Everything a supervisor can be told; the defaults suit a bot on one machine."""

    delivery: Delivery = Delivery.AT_LEAST_ONCE
    """What happens to a message that was being sent when the process died."""
    limits: Limits = field(default_factory=Limits)
    """What `Enqueue` accepts."""
    account: AccountSettings = field(default_factory=AccountSettings)
    """Backoff, send timeout, window and idle timeout of every account actor."""
    max_restarts: int = 3
    """Restarts of one account allowed within `restart_period`; one more parks it."""
    restart_period: float = 10.0
    """Seconds over which restarts are counted (OTP's restart intensity)."""
    retention: timedelta = timedelta(days=7)
    """Finished rows older than this are deleted by cleanup."""
    cleanup_interval: float | None = 3600.0
    """Seconds between automatic cleanups; None: only on `CleanupNow`."""
    sqlite: SqliteSettings = field(default_factory=SqliteSettings)
    """synchronous and busy timeout of a SQLite database."""
    readers: int = 4
    """Threads (and connections) serving reads."""
    send_threads: int = field(default_factory=lambda: min(1024, 64 * (os.cpu_count() or 2)))
    """Threads plain senders run on at most (a send with a timeout runs on one); past it,
    sends wait for a free thread, their timeout counting once begun. An `async def` sender
    needs none."""
    slow_send_after: float = 30.0
    """Seconds after which a send still under way is named in `GetHealth().slow_sends`."""
    stop_timeout: float = 75.0
    """Seconds a graceful stop waits for the accounts to finish their sends in flight (each at
    most `send_timeout`); past it the stop goes on, and what is still in flight stays
    `processing` until the next start settles it (sent again: at-least-once)."""
    account_threads: int = 32
    """Threads the account actors take turns on (an account costs no thread of its own). A send
    with `send_timeout` set waits on one of them; with `send_timeout=None` it runs on one, so
    this many hung senders would stall every account."""
    pause_check_interval: float | None = 5.0
    """Seconds between two reads of the pauses in force: a pause lifted by another process
    (`postroom resume`) is noticed within this long, and accounts disabled until lifted are
    reported (a warning once a minute while they last). None: never."""
    suspect_timeout: float = 120.0
    """Seconds a suspect (a message in flight at two crashes in a row) is given to be sent
    alone at boot before the other accounts start anyway."""
    commit_delay: float = 0.001
    """At most this many seconds the writer gathers more writes before a commit when they
    arrive back to back, while they keep arriving (group commit under load: fewer fsyncs per
    message); 0: commit at once, always."""
    pacing: Pacing = field(default_factory=Pacing)
    """Rate and per-recipient interval of every account (a guard; retry_after always wins)."""
    pacing_by_account: Mapping[str, Pacing] = field(default_factory=dict)
    """Per-phone exceptions to `pacing` (a user account paces far slower than a bot)."""


#: The wall clock for send timeouts of supervisors whose own clock is not one (one timer thread).
_REAL_TIME = SystemClock()
#: Seconds between two counts of the open messages while a `Drain` waits.
DRAIN_POLL = 0.05


class Supervisor(DeferredReplyActor):
    """Routes commands, owns account actors, restarts them, parks crash storms."""

    actor_inbox: SupervisorInbox

    @staticmethod
    def _create_actor_inbox() -> SupervisorInbox:
        return SupervisorInbox()

    def __init__(self, database: str | Any, sender: Sender | AsyncSender, *,
                 settings: SupervisorSettings | None = None, clock: Clock | None = None,
                 rng: RandomSource | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__()
        if is_coroutine_sender(sender) and loop is None:
            raise ValidationError("an async sender needs loop=, the event loop it belongs to")
        self.settings = settings or SupervisorSettings()
        self.clock: Clock = clock or SystemClock()
        self.sender = sender if is_coroutine_sender(sender) else running_awaitables(
            sender, loop, self.settings.account.send_timeout)
        self.loop = loop
        self.rng: RandomSource = rng or random.Random()
        self.health = HealthState()
        self.accounts: dict[str, pykka.ActorRef[AccountActor]] = {}
        self.routed: dict[str, int] = {}  # Delivers sent to the current incarnation
        self.restarts: dict[str, deque[float]] = {}
        self.parked: set[str] = set()
        self.sleepers: list[tuple[datetime, str]] = []  # stopped accounts with future work
        self._sleeping_until: dict[str, datetime] = {}  # the earliest entry of each in `sleepers`
        self._sleeper_timer: Any = None
        self._cleanup_timer: Any = None
        self._suspects: deque[tuple[int, str]] = deque()  # (id, phone), each sent alone at boot
        self._quarantined: str | None = None  # the one account running while that happens
        self._suspect_timer: Any = None
        self._pauses = PauseWatch()
        self._pause_timer: Any = None
        self._drains = DrainWaiters()
        self._drain_timer: Any = None
        self._counting = False  # a count of open messages for the drains is under way
        self.send_pool = SendPool(self.settings.send_threads)
        self.sends = SendWatch()
        # Send timeouts run on real time, whatever `clock` is (a test's FakeClock).
        self.deadlines = self.clock if isinstance(self.clock, SystemClock) else _REAL_TIME
        self.turns = DaemonPool("postroom-account", self.settings.account_threads)
        self._open_storage(database)
        try:
            self._boot_work = self._recover()
        except BaseException:
            self._close_storage()
            raise
        self.actor_inbox.door = Door(self.persistence, self.clock, self.settings.limits)
        _RUNNING.add(self.actor_ref)

    def _open_storage(self, database: str | Any) -> None:
        db = open_database(database, self.settings.sqlite)
        self.lock = OwnerLock(db)
        self.lock.acquire()
        try:
            self.storage = Storage(db, owner=self.lock)  # checks after each commit the file is still ours
            self.storage.create_schema()
            self.storage.close()  # this was the caller's thread; actors open their own
        except BaseException:
            self.lock.release()
            raise
        self.readers = ReaderPool(self.settings.readers)
        self.persistence = PersistenceActor.start(self.storage, self.clock, self._notify, self.health,
                                                  commit_delay=self.settings.commit_delay)

    def _recover(self) -> list[tuple[str, datetime]]:
        """Settle what a crash left PROCESSING and list the accounts with work.

        Runs in the caller of `start()`, so a database that cannot be read or written
        raises there instead of leaving a dead supervisor behind.
        """
        again = self.readers.run(self.storage.interrupted_again)  # before Recover settles them
        recovered: list[Message] = self.persistence.ask(
            Recover(self.settings.delivery), block=True)
        crash_point("boot.recovered")
        retried = {m.id for m in recovered if m.status is Status.RETRYING}
        self._suspects = deque((i, phone) for i, phone in again if i in retried)
        work: list[tuple[str, datetime]] = self.readers.run(self.storage.open_work)
        log.info("supervisor.recovered", interrupted=len(recovered), accounts=len(work),
                 suspects=len(self._suspects), delivery=self.settings.delivery.value)
        return work

    def on_start(self) -> None:
        if self._suspects:
            log.warning("quarantine.started", suspects=len(self._suspects))
            self._next_suspect()
        else:
            self._start_boot_accounts()
        self._arm_cleanup()
        self._check_pauses()  # at once: a disabled account is reported from the start

    def _start_boot_accounts(self) -> None:
        """Start the accounts with work due; the others sleep in the timer heap until theirs is
        (50,000 accounts with tomorrow's messages cost no actor today)."""
        now, slept = self.clock.now(), False
        for phone, first_due in self._boot_work:
            if first_due <= now:
                self._ensure_account(phone)
            else:
                slept = self._sleep(phone, first_due) or slept
        self._boot_work = []
        if slept:
            self._arm_sleepers()

    # -- suspects --------------------------------------------------------------------------
    # A crash charges an attempt to every message in flight. A poison message (its send kills
    # the process) is in flight at every crash, and so is, by bad luck or design, a slow
    # bystander: charged alike, both would end failed. So a message in flight at two crashes
    # in a row is sent alone at the next boot: its account is the only one running until its
    # outcome is recorded. A poison then kills the process with nothing else in flight, and a
    # bystander is sent and done with.

    def _next_suspect(self) -> None:
        """Stop the account that sent the last suspect; start the next one's, or every account."""
        if self._suspect_timer is not None:
            self._suspect_timer.cancel()
            self._suspect_timer = None
        if self._quarantined is not None:
            done = self._forget_account(self._quarantined)
            if done is not None:
                done.stop(block=False)  # it sends nothing more; the boot starts the account again
            self._quarantined = None
        if self._suspects:  # nothing is parked at boot: every suspect gets its turn
            message_id, phone = self._suspects.popleft()
            log.warning("quarantine.sending_alone", message_id=message_id, account=mask_phone(phone))
            self._quarantined = phone
            ref = self._start_account(phone, watch=message_id)
            give_up = functools.partial(tell_if_alive, self.actor_ref, SuspectSettled(phone, ref.actor_urn))
            self._suspect_timer = self.clock.call_later(self.settings.suspect_timeout, give_up)
            return
        log.info("quarantine.finished")
        # Enqueues routed to nobody meanwhile are in the database: read who has work now.
        self._boot_work = self.readers.run(self.storage.open_work)
        self._start_boot_accounts()

    def _suspect_settled(self, phone: str, urn: str) -> None:
        current = self.accounts.get(phone)
        if phone == self._quarantined and current is not None and current.actor_urn == urn:
            self._next_suspect()

    def on_stop(self) -> None:
        super().on_stop()
        for timer in (self._cleanup_timer, self._sleeper_timer, self._suspect_timer,
                      self._pause_timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        for request in self._drains.take_all():
            request.fail(SupervisorStopped("the supervisor stopped before the queue drained"))
        self._stop_accounts()
        self.send_pool.shutdown()
        self.turns.shutdown()
        self._close_storage()
        log.info("supervisor.stopped")

    def _stop_accounts(self) -> None:
        """Stop every account, waiting at most `stop_timeout` for the sends in flight."""
        stopping = [ref.stop(block=False) for ref in self.accounts.values()]
        self.accounts.clear()
        try:
            pykka.get_all(stopping, timeout=self.settings.stop_timeout)
        except pykka.Timeout:
            hung = self.sends.running_longer_than(0.0, self.deadlines.monotonic())
            log.error("supervisor.stop_incomplete", timeout=self.settings.stop_timeout,
                      sends_in_flight=[mask_phone(phone) for phone in hung],
                      left="in flight: processing until the next start settles it")

    def _close_storage(self) -> None:
        """Stop the writer (it commits what it holds), the readers, then release the file."""
        self.persistence.stop()
        self.readers.shutdown(self.storage.close)
        self.storage.close()
        self.lock.release()  # last: closing the locked file earlier would drop SQLite's own locks

    def unanswered_error(self, request: Request, error: Exception) -> None:
        # The supervisor is the root: a bad `tell` is refused and logged, never fatal.
        log_unanswered(type(request.message).__name__, error)

    def on_failure(self, *exc_info: Any) -> None:
        # The supervisor itself failed on a tell: take everything down in order.
        self.on_stop()

    # -- commands ------------------------------------------------------------------------

    def handle(self, request: Request) -> None:
        match request.message:
            case Enqueue() | EnqueueBatch() | Broadcast() as command:
                # Put here (not passed through by the inbox): queued behind other enqueues.
                try:
                    self.persistence.tell(self._persist(command, request))
                finally:
                    self.actor_inbox.enqueue_handed_on()
            case GetMessage(message_id):
                self._read(request, self.storage.get, message_id)
            case ListMessages(phone, status, limit, after_id):
                self._read(request, self.storage.list_messages, phone, status, limit, after_id)
            case CancelMessage(message_id):
                self.persistence.tell(Cancel(message_id, request))
            case RequeueMessage(message_id):
                self.persistence.tell(Requeue(message_id, request))
            case GetStats():
                self._read(request, self.storage.stats)
            case CleanupNow(older_than):
                cutoff = self.clock.now() - (older_than or self.settings.retention)
                self.persistence.tell(Cleanup(cutoff, request))
            case Drain(timeout):
                self._drain(request, timeout)
            case GetHealth():
                request.answer(self._health())
            case ResumeAccount(phone):
                request.answer(self._resume(phone))
            case _:
                self._handle_internal(request.message)

    def _persist(self, command: Enqueue | EnqueueBatch | Broadcast, request: Request) -> Persist:
        now, limits = self.clock.now(), self.settings.limits
        match command:
            case Enqueue():
                return Persist([validate_enqueue(command, now, limits)], request, batch=False)
            case EnqueueBatch(commands):
                return Persist(validate_enqueues(commands, now, limits), request, batch=True)
            case Broadcast():
                return Persist(validate_broadcast(command, now, limits), request, batch=True)

    def _handle_internal(self, message: Any) -> None:
        match message:
            case Inserted(parts):
                for news, rows in parts:
                    _log_enqueued(rows, news)  # here, not in the writer: it waits for nobody
                self._route([news[position].as_pending(message_id)
                             for news, rows in parts for message_id, position in rows])
            case Committed(messages):
                self._route(messages)
            case Forget(phone) as forget:
                if phone in self.accounts:
                    tell_if_alive(self.accounts[phone], forget)
            case AccountFailed(phone, urn, error):
                self._account_failed(phone, urn, error)
            case SuspectSettled(phone, urn):
                self._suspect_settled(phone, urn)
            case AccountIdle(phone, urn, wake_at, seen):
                self._account_idle(phone, urn, wake_at, seen)
            case RunCleanup():
                self.persistence.tell(Cleanup(self.clock.now() - self.settings.retention, None))
                self._arm_cleanup()
            case WakeAccounts():
                self._wake_sleepers()
            case AccountPaused(phone, until):
                self._pauses.noted(phone, until)
            case CheckPauses():
                self._check_pauses()
            case PausesRead(pauses, asked):
                self._pauses_read(pauses, asked)
            case CheckDrains():
                self._count_open()
            case OpenCounted(count):
                self._open_counted(count)
            case _:
                raise ValidationError(f"unknown command {type(message).__name__}")

    def _read(self, request: Request, query: Callable[..., Any], *args: Any) -> None:
        """Run a read on the reader pool; the supervisor goes on routing meanwhile."""
        future = self.readers.submit(query, *args)
        future.add_done_callback(lambda done: _settle_future(request, done))

    def _health(self) -> Health:
        degraded, error = self.health.snapshot()
        slow = self.sends.running_longer_than(self.settings.slow_send_after, self.deadlines.monotonic())
        return Health(degraded=degraded, last_error=error, accounts_running=len(self.accounts),
                      parked_accounts=tuple(sorted(mask_phone(p) for p in self.parked)),
                      slow_sends=tuple(mask_phone(p) for p in slow))

    # -- account lifecycle -------------------------------------------------------------------

    def _route(self, messages: Sequence[Message]) -> None:
        now, slept = self.clock.now(), False
        by_account: dict[str, list[Message]] = {}
        for message in messages:
            by_account.setdefault(message.phone, []).append(message)
        for phone, mine in by_account.items():
            if phone not in self.accounts and all(m.available_at > now for m in mine):
                # Scheduled work for a stopped account costs no thread until it falls due.
                slept = self._sleep(phone, min(m.available_at for m in mine)) or slept
                continue
            ref = self._ensure_account(phone)
            if ref is not None:
                self.routed[phone] += 1
                tell_if_alive(ref, Deliver(mine))
        if slept:
            self._arm_sleepers()

    def _ensure_account(self, phone: str) -> pykka.ActorRef[AccountActor] | None:
        if phone in self.parked:
            return None
        if self._quarantined is not None and phone != self._quarantined:
            return None  # a suspect is being sent alone; the boot after it reads this work back
        ref = self.accounts.get(phone)
        if ref is None:
            return self._start_account(phone)
        # A dead ref is a crash whose report is on its way: the restart loads from the database.
        return ref if ref.is_alive() else None

    def _start_account(self, phone: str, watch: int | None = None) -> pykka.ActorRef[AccountActor]:
        deps = AccountDeps(
            sender=self.sender, persistence=self.persistence, supervisor=self.actor_ref,
            storage=self.storage, readers=self.readers, send_pool=self.send_pool, turns=self.turns,
            deadlines=self.deadlines, clock=self.clock, rng=self.rng, settings=self.settings.account,
            loop=self.loop,
            pacing=self.settings.pacing_by_account.get(phone, self.settings.pacing), watch=watch,
            sends=self.sends,
        )
        ref = AccountActor.start(phone, deps)
        self.accounts[phone] = ref
        self.routed[phone] = 0
        return ref

    def _account_failed(self, phone: str, urn: str, error: str) -> None:
        current = self.accounts.get(phone)
        if current is None or current.actor_urn != urn:
            return  # a report about an incarnation already replaced
        if phone == self._quarantined:
            # Sending its suspect alone crashed the actor: settle what it held, go on; the
            # boot that follows starts it again.
            self.persistence.ask(Recover(self.settings.delivery, phone))
            log.warning("account.crashed_alone", account=mask_phone(phone), error=error)
            self._next_suspect()
            return
        self._forget_account(phone)
        now = self.clock.monotonic()
        history = self.restarts.setdefault(phone, deque())
        history.append(now)
        while history and now - history[0] > self.settings.restart_period:
            history.popleft()
        # The dead actor gave back what it held (its on_failure); anything it could not write
        # back is settled as a crash of the whole process would be, parked or not.
        self.persistence.ask(Recover(self.settings.delivery, phone), block=True)
        if len(history) > self.settings.max_restarts:
            self.parked.add(phone)
            log.error("account.parked", account=mask_phone(phone), error=error,
                      restarts=len(history), period=self.settings.restart_period)
            return
        log.warning("account.restarted", account=mask_phone(phone), error=error)
        self._start_account(phone)

    def _account_idle(self, phone: str, urn: str, wake_at: datetime | None, seen: int) -> None:
        current = self.accounts.get(phone)
        if current is None or current.actor_urn != urn or self.routed.get(phone) != seen:
            return  # something was routed to it since: it is not idle after all
        self._forget_account(phone)
        current.stop(block=False)
        if wake_at is not None and self._sleep(phone, wake_at):
            self._arm_sleepers()

    def _forget_account(self, phone: str) -> pykka.ActorRef[AccountActor] | None:
        """An account actor is gone (stopped, crashed): nothing of it is kept."""
        self.routed.pop(phone, None)
        return self.accounts.pop(phone, None)

    def _sleep(self, phone: str, until: datetime) -> bool:
        """Wake `phone` at `until` unless it is already due to wake earlier; True if that is new."""
        known = self._sleeping_until.get(phone)
        if known is not None and known <= until:
            return False  # one entry per account, however many messages a broadcast scheduled
        self._sleeping_until[phone] = until
        heapq.heappush(self.sleepers, (until, phone))
        return True

    def _arm_sleepers(self) -> None:
        if self._sleeper_timer is not None:
            self._sleeper_timer.cancel()
        if self.sleepers:
            delay = (self.sleepers[0][0] - self.clock.now()).total_seconds()
            ref = self.actor_ref
            self._sleeper_timer = self.clock.call_later(delay, lambda: tell_if_alive(ref, WakeAccounts()))

    def _wake_sleepers(self) -> None:
        now = self.clock.now()
        while self.sleepers and self.sleepers[0][0] <= now:
            at, phone = heapq.heappop(self.sleepers)
            if self._sleeping_until.get(phone) == at:
                del self._sleeping_until[phone]
            self._ensure_account(phone)
        self._arm_sleepers()

    def _resume(self, phone: str) -> bool:
        lifted: bool = self.persistence.ask(LiftPause(phone), block=True)
        if lifted:
            log.info("account.unpaused", account=mask_phone(phone))
            if phone in self.accounts:
                tell_if_alive(self.accounts[phone], Unpause())
            else:
                self._ensure_account(phone)  # a disabled account may have stopped while idle
        if phone not in self.parked:
            return lifted
        self.parked.discard(phone)
        self.restarts.pop(phone, None)
        self.persistence.ask(Recover(self.settings.delivery, phone))
        log.info("account.resumed", account=mask_phone(phone))
        self._start_account(phone)
        return True

    # -- pauses lifted elsewhere, disabled accounts --------------------------------------------

    def _check_pauses(self) -> None:
        """Read every pause in force on the reader pool; `_pauses_read` takes the answer."""
        asked, ref = self._pauses.asking(), self.actor_ref
        future = self.readers.submit(self.storage.pauses, self.clock.now())
        future.add_done_callback(lambda done: tell_if_alive(ref, PausesRead(_result(done), asked)))

    def _pauses_read(self, pauses: Sequence[AccountPause] | StorageError, asked: int) -> None:
        if isinstance(pauses, StorageError):
            log.warning("pauses.read_failed", error=str(pauses))
        else:
            for phone in self._pauses.read(pauses, asked, self.clock.now()):
                self._pause_lifted(phone)
            disabled = self._pauses.disabled_to_report(pauses, self.clock.monotonic())
            if disabled:
                log.warning("accounts.disabled", count=len(disabled),
                            accounts=[mask_phone(phone) for phone in disabled[:20]],
                            lift="postroom resume ACCOUNT --database URL, or ResumeAccount(ACCOUNT)")
        interval, ref = self.settings.pause_check_interval, self.actor_ref
        if interval is not None:
            self._pause_timer = self.clock.call_later(interval, lambda: tell_if_alive(ref, CheckPauses()))

    def _pause_lifted(self, phone: str) -> None:
        """Lifted by another process: the account reads its pause again (starting, if need be)."""
        log.info("account.pause_lifted", account=mask_phone(phone))
        if phone in self.accounts:
            tell_if_alive(self.accounts[phone], CheckPause())
        else:
            self._ensure_account(phone)

    # -- drains ---------------------------------------------------------------------------

    def _drain(self, request: Request, timeout: float | None) -> None:
        if timeout is not None and (not isinstance(timeout, int | float) or isinstance(timeout, bool)
                                    or not math.isfinite(timeout) or timeout < 0):
            raise ValidationError(f"Drain timeout must be a finite number of seconds >= 0, not {timeout!r}")
        deadline = None if timeout is None else self.deadlines.monotonic() + timeout
        self._drains.add(request, deadline)
        self._count_open()

    def _count_open(self) -> None:
        if self._counting or not self._drains:
            return
        self._counting, ref = True, self.actor_ref
        future = self.readers.submit(self.storage.count_open)
        future.add_done_callback(lambda done: tell_if_alive(ref, OpenCounted(_result(done))))

    def _open_counted(self, count: int | StorageError) -> None:
        self._counting = False
        if isinstance(count, StorageError):
            for request in self._drains.take_all():
                request.fail(count)
            return
        for request in self._drains.counted(count, self.deadlines.monotonic()):
            request.answer(count)
        if self._drains:
            deadline = self._drains.next_deadline()
            delay = DRAIN_POLL if deadline is None else min(
                DRAIN_POLL, max(0.0, deadline - self.deadlines.monotonic()))
            ref = self.actor_ref
            self._drain_timer = self.deadlines.call_later(delay, lambda: tell_if_alive(ref, CheckDrains()))

    def _arm_cleanup(self) -> None:
        interval = self.settings.cleanup_interval
        if interval is not None:
            ref = self.actor_ref
            self._cleanup_timer = self.clock.call_later(interval, lambda: tell_if_alive(ref, RunCleanup()))

    def _notify(self, message: Any) -> None:
        """Called by the persistence actor after a commit (in its thread)."""
        tell_if_alive(self.actor_ref, message)


class AsyncPostroom:
    """The supervisor for asyncio bots: every command is awaitable and never blocks the loop.

        room = await AsyncPostroom.start("sqlite:///postroom.db", send)   # send may be async
        message_id = await room.enqueue(phone="+15550001", user_id="42", text="hi")
        await room.stop()
    """

    def __init__(self, ref: pykka.ActorRef[Supervisor]) -> None:
        self.ref = ref

    @classmethod
    async def start(cls, database: str | Any, sender: Sender | AsyncSender,
                    **options: Any) -> AsyncPostroom:
        """Start a supervisor whose coroutine sender (if any) runs on the running loop."""
        loop = asyncio.get_running_loop()
        # Opening the database and recovering is blocking I/O: once, off the loop.
        ref = await asyncio.to_thread(Supervisor.start, database, sender, loop=loop, **options)
        return cls(ref)

    async def ask(self, command: Any) -> Any:
        """Any command of the supervisor; its answer, or its error raised here."""
        return await ask_async(self.ref, command)

    async def enqueue(self, phone: str, user_id: str | int, text: str = "", **fields: Any) -> int:
        """Queue one message; its id once committed."""
        return int(await self.ask(Enqueue(phone=phone, user_id=user_id, text=text, **fields)))

    async def enqueue_batch(self, messages: Sequence[Enqueue]) -> list[int]:
        """Queue many messages in one commit; their ids."""
        return list(await self.ask(EnqueueBatch(messages)))

    async def broadcast(self, recipients: Sequence[tuple[str, str | int]], text: str = "",
                        **fields: Any) -> list[int]:
        """Queue one message to many (phone, user_id) recipients in one commit; their ids."""
        return list(await self.ask(Broadcast(recipients, text=text, **fields)))

    async def get(self, message_id: int) -> Message:
        """One message."""
        return await self.ask(GetMessage(message_id))  # type: ignore[no-any-return]

    async def cancel(self, message_id: int) -> Message:
        """Cancel a pending or retrying message."""
        return await self.ask(CancelMessage(message_id))  # type: ignore[no-any-return]

    async def stats(self) -> QueueStats:
        """Counts by status and account."""
        return await self.ask(GetStats())  # type: ignore[no-any-return]

    async def drain(self, timeout: float | None = None) -> int:
        """Wait until no message is open, at most `timeout` seconds; how many still are."""
        return int(await self.ask(Drain(timeout)))

    async def health(self) -> Health:
        """Degraded or not, and parked accounts."""
        return await self.ask(GetHealth())  # type: ignore[no-any-return]

    async def stop(self, timeout: float = 30) -> None:
        """Stop gracefully: in-flight sends (coroutines on this loop too) finish and are recorded."""
        if self.ref.is_alive():
            await asyncio.to_thread(lambda: self.ref.stop(block=True, timeout=timeout))


_RUNNING: weakref.WeakSet[pykka.ActorRef[Supervisor]] = weakref.WeakSet()


@atexit.register
def _stop_forgotten_supervisors() -> None:
    """At interpreter exit, stop supervisors the host forgot, so in-flight work is recorded."""
    for ref in list(_RUNNING):
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            ref.stop(timeout=10)


def _result(done: Future[Any]) -> Any:
    """A read's result, or the StorageError it raised (any other error wrapped in one: it
    must reach the supervisor, not die in the reader's callback)."""
    error = done.exception()
    if error is None:
        return done.result()
    if isinstance(error, StorageError):
        return error
    wrapped = StorageError(f"internal error in a read: {type(error).__name__}")
    wrapped.__cause__ = error
    return wrapped


def _settle_future(request: Request, done: Future[Any]) -> None:
    error = done.exception()
    if error is not None:
        request.fail(error)
    else:
        request.answer(done.result())


def _log_enqueued(rows: Sequence[tuple[int, int]], news: Sequence[NewMessage]) -> None:
    """One line per committed single enqueue; one line per batch."""
    if len(rows) == 1:
        ((message_id, position),) = rows
        new = news[position]
        log.info("message.enqueued", message_id=message_id, priority=new.priority.name,
                 account=mask_phone(new.phone))
        return
    # A broadcast is one line, not 100,000: each message's id appears again when it is sent.
    log.info("messages.enqueued", count=len(rows), first_id=rows[0][0], last_id=rows[-1][0])
