"""The Supervisor actor: the one door in, and the owner of every account actor.

    ref = Supervisor.start(database="sqlite:///postroom.db", sender=send)
    message_id = ref.ask(Enqueue(phone="+15550001", user_id="42", text="hi"))
    ref.stop()

Start order, in the caller's thread (so that a bad URL, a locked database or one that
cannot be read raises from `start()`): open the database and take its owner lock, start
the writer, acquire every account (rows an earlier owner left `processing` are settled
by the delivery policy), list the accounts with work; then, in the supervisor's first
turn, start those whose work is due (the others sleep until theirs is). Stop order is
the reverse: every account is released (its send in flight ends and is recorded), then
the writer stops (it commits what it holds), then the database is closed and its lock
released.

Enqueue commands take one documented fast path (`admit`): checked in the caller's
thread and handed straight to the writer, which answers the caller after the commit and
hands the new rows to their running accounts itself. One thread's enqueue commands all
take it, so they are written in the order sent. Every other command is queued here.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import random
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from postroom_common import require_postroom_names

require_postroom_names("actors", "storage")  # before importing them: a clear error if taken

import pykka

from actors import (
    AbandonedSends,
    AccountActor,
    AccountCrashed,
    AccountDeps,
    AccountIdle,
    AccountPaused,
    AccountReleased,
    AccountSettings,
    AccountSuspended,
    Arrived,
    BackoffPolicy,
    Broadcast,
    BucketsTaken,
    Cancelled,
    CancelMessage,
    CancelRow,
    ChangesDue,
    CleanupDue,
    CleanupNow,
    Clock,
    DeleteFinished,
    Drain,
    DrainCheckDue,
    Enqueue,
    EnqueueBatch,
    FakeClock,
    FeedRead,
    GetHealth,
    GetMessage,
    GetStats,
    Health,
    HealthState,
    Insert,
    LiftPause,
    Limits,
    ListMessages,
    OpenCounted,
    PauseCheckDue,
    PauseLifted,
    PausesRead,
    PermanentError,
    PersistenceActor,
    RandomSource,
    RateLimited,
    ReadPauseAgain,
    Release,
    ReleaseBuckets,
    RequeueMessage,
    RequeueRow,
    ResumeAccount,
    Sender,
    SenderReturnedAwaitable,
    SendError,
    SendTimeout,
    SettleInFlight,
    SleepersDue,
    StartAccountsFor,
    SuspectSettled,
    SystemClock,
    TakeBuckets,
    TransientError,
    TrimChanges,
    WriteBarrier,
    classify,
    keeper,
    mask_phone,
    sender_with_adapters,
    validate_insert,
)
from actors._faults import crash_point
from actors.aio import (
    AsyncSender,
    check_sender,
    end_sends_of_closed_loop,
    is_coroutine_sender,
    running_awaitables,
)
from actors.directory import AccountDirectory
from actors.feed import FeedState
from actors.holdings import Holdings
from actors.hooks import AccountEvent, AccountEventKind, HookDispatcher, Hooks, OutcomeEvent
from actors.keeper import AccountKeeper, Place
from actors.lease import ClockSkew, LeaseKeeper, NodeSettings
from actors.memory import IdleTrim, release_free_memory
from actors.metrics import Gauges, GetGauges, Metrics
from actors.pacing import Pacing
from actors.persistence import log_unanswered
from actors.producer import AsyncProducer, Producer
from actors.runtime import Answer, Reply, TurnActor, TurnPool, ask_async, forward, tell_if_alive, weak_reply
from actors.sending import SendPool, SendWatch
from actors.watches import DrainWaiters, PauseWatch
from postroom_common import (
    AccountPause,
    DatabaseLocked,
    DatabaseNotFound,
    Delivery,
    EncryptionKeyError,
    IdempotencyConflict,
    InvalidTransition,
    Message,
    MessageNotFound,
    OwnershipLost,
    PostroomError,
    Priority,
    QueueStats,
    SchemaMismatch,
    Status,
    StorageError,
    SupervisorStopped,
    ValidationError,
)
from postroom_common.buckets import BUCKETS, bucket_of
from postroom_common.checks import check_count, check_seconds, check_timedelta, earlier
from postroom_common.logs import get_logger
from storage import (
    OwnerLock,
    PostgresSettings,
    SqliteSettings,
    Storage,
    holder_name,
    is_postgres,
    open_database,
)
from storage.listen import ChangeListener

__all__ = [
    "AbandonedSends",
    "AccountEvent",
    "AccountEventKind",
    "AccountSettings",
    "AccountSuspended",
    "AsyncPostroom",
    "AsyncProducer",
    "AsyncSender",
    "BackoffPolicy",
    "Broadcast",
    "CancelMessage",
    "CleanupNow",
    "ClockSkew",
    "DatabaseLocked",
    "DatabaseNotFound",
    "Delivery",
    "Drain",
    "EncryptionKeyError",
    "Enqueue",
    "EnqueueBatch",
    "FakeClock",
    "GetHealth",
    "GetMessage",
    "GetStats",
    "Health",
    "Hooks",
    "IdempotencyConflict",
    "InvalidTransition",
    "Limits",
    "ListMessages",
    "Message",
    "MessageNotFound",
    "Metrics",
    "NodeSettings",
    "OutcomeEvent",
    "OwnershipLost",
    "Pacing",
    "PermanentError",
    "PostgresSettings",
    "PostroomError",
    "Priority",
    "Producer",
    "QueueStats",
    "RateLimited",
    "RequeueMessage",
    "ResumeAccount",
    "SchemaMismatch",
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
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    """How long a PostgreSQL database may keep a call waiting (connect, statement, lock, TCP)."""
    send_threads: int = field(default_factory=lambda: min(1024, 64 * (os.cpu_count() or 2)))
    """Threads plain senders run on at most (a send with a timeout runs on one); past it,
    sends wait for a free thread, their timeout counting once begun. An `async def` sender
    needs none."""
    abandoned_send_threads: int = 1024
    """Threads left to plain senders that did not return within `send_timeout` which do not
    count against `send_threads`, at most; past it they do (`GetHealth().abandoned_sends`,
    a `pool.abandoned_past_bound` warning at most once a minute)."""
    slow_send_after: float = 30.0
    """Seconds after which a send still under way is named in `GetHealth().slow_sends`."""
    slow_commit_after: float = 5.0
    """Seconds after which a commit still waiting for the database makes `GetHealth` report
    degraded (a lock held elsewhere, a server or a network path that hangs)."""
    stop_timeout: float = 75.0
    """Seconds a graceful stop waits for the accounts to finish their sends in flight (each at
    most `send_timeout`) and record them; past it the stop goes on, and what is still in flight
    stays `processing` until the next start settles it (sent again: at-least-once). A write the
    database refuses during the stop, or leaves unanswered `slow_commit_after` once no send is
    under way, is not waited for: the next start settles it the same way."""
    account_threads: int = 8
    """The runtime's threads: the accounts and the supervisor take their turns on them, and
    reads run on them; at least 2. The writer has a thread of its own, and no sender ever runs
    on one. Turns hold the GIL, so more threads help only reads that wait on the database
    (PostgreSQL far away); they cost switches between threads. On PostgreSQL each may hold a
    connection."""
    pause_check_interval: float | None = 5.0
    """Seconds between two reads of the pauses in force: a pause lifted by another process
    (`postroom resume`) is noticed within this long, and accounts disabled until lifted are
    reported (a warning once a minute while they last). None: never."""
    suspect_timeout: float = 120.0
    """Seconds a suspect (a message in flight at two crashes in a row) is given to be sent
    alone at boot before the other accounts start anyway."""
    max_suspects_alone: int = 3
    """Suspects a boot sends alone, one after the other, at most: a crash that leaves more is
    not blamed on a message (a crash storm with many accounts sending) and is recovered as an
    ordinary one, so a boot is held up at most this many times `suspect_timeout`; 0: never."""
    feed_poll_interval: float = 0.2
    """Seconds between two reads of the change feed, where other processes (producers, the
    operator's commands) record the rows, cancels, requeues and pauses they write: the longest
    a producer's message waits to be noticed on SQLite, and on PostgreSQL with `feed_listen`
    off. One indexed read each, usually of nothing."""
    feed_listen: bool = True
    """PostgreSQL: LISTEN for those changes, noticed within milliseconds, the feed then read
    every `feed_safety_interval` too. Off behind a pooler in transaction mode (pgbouncer), which
    cannot keep a LISTEN: the feed is polled every `feed_poll_interval`."""
    feed_safety_interval: float = 5.0
    """Seconds between two reads of the feed while listening (a notification lost to a dropped
    connection is caught up by the reconnection itself; this is the net under it)."""
    commit_delay: float = 0.001
    """At most this many seconds the writer gathers more writes before a commit when they
    arrive back to back, while they keep arriving (group commit under load: fewer fsyncs per
    message); 0: commit at once, always."""
    nodes: NodeSettings | None = None
    """PostgreSQL: run as one node of several on the database, sending for the accounts of the
    buckets it holds by lease (README, "Several nodes"); None: the one owner of its database,
    which a second supervisor cannot start beside (SQLite: always one per file)."""
    pacing: Pacing = field(default_factory=Pacing)
    """Rate and per-recipient interval of every account (a guard; retry_after always wins)."""
    pacing_by_account: Mapping[str, Pacing] = field(default_factory=dict)
    """Per-phone exceptions to `pacing` (a user account paces far slower than a bot)."""

    def __post_init__(self) -> None:
        check_count("SupervisorSettings.max_restarts", self.max_restarts, minimum=0)
        check_seconds("SupervisorSettings.restart_period", self.restart_period)
        check_timedelta("SupervisorSettings.retention", self.retention)
        check_seconds("SupervisorSettings.cleanup_interval", self.cleanup_interval, positive=True,
                      optional=True)
        check_count("SupervisorSettings.send_threads", self.send_threads, minimum=1)
        check_seconds("SupervisorSettings.slow_send_after", self.slow_send_after)
        check_seconds("SupervisorSettings.stop_timeout", self.stop_timeout)
        # At least 2: the writer and the supervisor take turns on them too.
        check_count("SupervisorSettings.account_threads", self.account_threads, minimum=2)
        check_seconds("SupervisorSettings.pause_check_interval", self.pause_check_interval, positive=True,
                      optional=True)
        check_seconds("SupervisorSettings.suspect_timeout", self.suspect_timeout)
        check_count("SupervisorSettings.max_suspects_alone", self.max_suspects_alone, minimum=0)
        check_seconds("SupervisorSettings.commit_delay", self.commit_delay)
        check_seconds("SupervisorSettings.feed_poll_interval", self.feed_poll_interval, positive=True)
        check_seconds("SupervisorSettings.feed_safety_interval", self.feed_safety_interval, positive=True)
        check_count("SupervisorSettings.abandoned_send_threads", self.abandoned_send_threads, minimum=0)


#: The wall clock of every supervisor not given another, and of every send timeout: one timer
#: thread per process, however many supervisors a host starts and stops.
_REAL_TIME = SystemClock()
#: Seconds between two counts of the open messages while a `Drain` waits.
DRAIN_POLL = 0.05
#: Accounts idled out, at least, before the memory they left free is given back (and at most
#: once per TRIM_INTERVAL seconds): a burst of accounts, not the one that comes and goes.
TRIM_AFTER_IDLE = 500
TRIM_INTERVAL = 10.0
#: How long the change feed's entries are kept: read within moments, kept for the operator.
FEED_KEPT = timedelta(hours=1)
#: Seconds between two looks at the bot's event loop: closed without `stop()`, the supervisor stops.
LOOP_CHECK = 1.0
#: Seconds the database is given, once the accounts are released, to answer what is still
#: under way (the writer's last commits, reads, the owner lock's release) before a stop cuts it.
STOP_GRACE = 2.0
#: Seconds a stop waits for the runtime's threads beyond that, and beyond the time a call
#: already cut may still take to fail (a connection being opened, a SQLite busy wait).
STOP_JOIN = 1.0
#: Seconds between two looks, while a stop waits for the accounts, at whether only the
#: database is left to wait for.
STOP_LOOK = 0.25
#: The enqueue commands, which `admit` hands straight to the writer.
_ENQUEUES = (Enqueue, EnqueueBatch, Broadcast)


class Supervisor(TurnActor):
    """The door: routes commands, and carries out what its `AccountKeeper` decides about the
    account actors (start, restart, park, release, wake the sleepers)."""

    urgent = True

    def __init__(self, database: str | Any, sender: Sender | AsyncSender, *,
                 settings: SupervisorSettings | None = None, clock: Clock | None = None,
                 rng: RandomSource | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, hooks: Hooks | None = None,
                 metrics: Metrics | None = None,
                 _demo_check: Callable[[Storage], None] | None = None) -> None:
        # `_demo_check` is `postroom demo`'s alone: its supervisor keeps the database's demo
        # mark, which every other one removes, once the check (run under the owner lock,
        # before anything is written) has not refused the database.
        check_sender(sender, loop)  # before anything is opened or locked
        if hooks is not None:
            hooks.check(loop)
        if metrics is not None and not isinstance(metrics, Metrics):
            raise ValidationError(f"metrics must be a postroom Metrics, not a {type(metrics).__name__}")
        _stop_supervisors_of_closed_loops()  # one may still own this database
        self.settings = settings or SupervisorSettings()
        self._demo_check = _demo_check
        super().__init__(TurnPool("postroom-actor", self.settings.account_threads,
                                  call_later=_REAL_TIME.call_later))
        self.clock: Clock = clock or _REAL_TIME
        self.sender = sender if is_coroutine_sender(sender) else running_awaitables(
            sender, loop, self.settings.account.send_timeout)
        self.loop = loop
        self.rng: RandomSource = rng or random.Random()
        self.health = HealthState()
        self.directory = AccountDirectory()  # the running accounts, as the writer routes to them
        self.keeper = AccountKeeper(self.settings.max_restarts, self.settings.restart_period,
                                    self.settings.suspect_timeout, every_bucket=self.settings.nodes is None)
        self._timers: dict[str, Any] = {}  # name -> the armed handle (cleanup, sleepers, ...)
        self._suspects: list[tuple[int, str]] = []  # (id, phone), each sent alone at boot
        self._pauses = PauseWatch()
        self._drains = DrainWaiters()
        self._counting = False  # a count of open messages for the drains is under way
        self._counts = 0  # counts started (they are numbered)
        # The writer's turns on a thread of their own: its fsync never holds a thread the accounts
        # need (one commit per request, accounts starved, is a state that feeds itself), and
        # back-to-back commits use one connection and its page cache.
        self._writer_pool = TurnPool("postroom-writer", 1)
        self.send_pool = SendPool(self.settings.send_threads, call_later=_REAL_TIME.call_later,
                                  max_abandoned=self.settings.abandoned_send_threads)
        self.sends = SendWatch()
        # Send timeouts run on real time, whatever `clock` is (a test's FakeClock).
        self.deadlines = self.clock if isinstance(self.clock, SystemClock) else _REAL_TIME
        self.closed = threading.Event()  # set once `on_stop` is over (the database released)
        self._trim = IdleTrim(TRIM_AFTER_IDLE, TRIM_INTERVAL)
        self._listener: ChangeListener | None = None  # PostgreSQL: wakes it at others' commits
        self.holdings = Holdings()  # the buckets of accounts this node sends for
        self.lease: LeaseKeeper | None = None  # a node of several: its lease on the database
        self._taking = False  # a TakeBuckets is under way
        # Started before the writer (boot's settlements are outcomes too); none without a hook.
        self.hooks = HookDispatcher(hooks, loop) if hooks is not None and hooks.any else None
        self.metrics = metrics  # None: nothing is counted, timed or built for metrics
        try:
            self._open_storage(database)
        except BaseException:
            self._stop_hooks()
            raise
        try:
            self._boot_work = self._acquire_every_account()
        except BaseException:
            if self.lease is not None:
                self.lease.stop(leave=True)  # joined: its row would hold buckets placed on it
            self._close_storage()
            self._stop_hooks()
            raise
        _RUNNING.add(self.actor_ref)
        if metrics is not None:
            metrics.attach(self.actor_ref)
        if loop is not None:
            with _ON_LOOPS_LOCK:
                _ON_LOOPS.add(self)

    def _open_storage(self, database: str | Any) -> None:
        nodes = self.settings.nodes
        # Every connection named so: a node that takes this one's buckets after its lease
        # expired ends its sessions by this name (a paused process holds its locks otherwise).
        self.holder = holder_name(unique=nodes is not None)
        db = open_database(database, self.settings.sqlite, postgres=self.settings.postgres,
                           application_name=self.holder)
        if nodes is not None and not is_postgres(db):
            raise ValidationError("SupervisorSettings.nodes needs PostgreSQL: a SQLite file has one "
                                  "node, its owner (leave nodes unset)")
        self.lock = OwnerLock(db, shared=nodes is not None)
        self.lock.acquire()
        try:
            self.storage = Storage(db, owner=self.lock)  # checks after each commit the file is still ours
            self.storage.cut_calls_at(None)  # a database adopted again after an earlier stop cut its calls
            if self._demo_check is not None:
                self._demo_check(self.storage)
            self.storage.create_schema(keep_demo_mark=self._demo_check is not None)
            self.storage.check_keys()  # before anything is read or written: a clear refusal
            # The one node of the database: it takes every bucket at a new epoch (at boot,
            # `_acquire_every_account`), which fences a former owner that lost its lock without
            # noticing (a killed lock connection): none of its claims commits after that.
            if nodes is None:
                self.storage.take_ownership(self.holder, self.clock.now())
                self.holdings.node = self.storage.join(self.holder, lease=None)
            else:
                ref = self.actor_ref
                self.lease = LeaseKeeper(
                    self.storage, self.holdings, nodes, self.holder,
                    on_moves=lambda take, give: tell_if_alive(ref, _BucketsToMove(take, give)),
                    on_lost=lambda buckets: tell_if_alive(ref, _LeaseLost(buckets)))
                self.lease.join()
        except BaseException:
            self.storage.close()
            self.lock.release()
            raise
        self.persistence = PersistenceActor.start(
            self._writer_pool, self.storage, self.clock, self.health, self.directory, self.actor_ref,
            commit_delay=self.settings.commit_delay, holdings=self.holdings, hooks=self.hooks,
            metrics=self.metrics)

    def _acquire_every_account(self) -> list[tuple[str, datetime]]:
        """Boot is acquiring every account: settle what an earlier owner left in flight (by the
        delivery policy) and list the accounts with work, and when each is due.

        Runs in the caller of `start()`, so a database that cannot be read or written raises
        there instead of leaving a dead supervisor behind.
        """
        if self.lease is not None:  # a node of several: its buckets come with its lease
            self._feed = FeedState(self.storage.feed_cursor(self.deadlines.monotonic()))
            self.storage.close()
            log.info("supervisor.recovered", node=self.holdings.node, accounts=0,
                     left="the buckets this node wins bring their accounts")
            return []
        again = self.storage.interrupted_again()  # before the settlement counts this crash
        assert self.holdings.node is not None
        taken: BucketsTaken = self.persistence.ask(
            TakeBuckets(self.holdings.node, range(BUCKETS), self.settings.delivery, force=True), block=True)
        settled = taken.settled
        crash_point("boot.recovered")
        retried = {m.id for m in settled if m.status is Status.RETRYING}
        suspects = [(i, phone) for i, phone in again if i in retried]
        # Before the accounts' read: a change committed after it is read from the feed.
        self._feed = FeedState(self.storage.feed_cursor(self.deadlines.monotonic()))
        work = self.storage.open_work()
        self.storage.close()  # this was the caller's thread; the actors' threads open their own
        log.info("supervisor.recovered", interrupted=len(settled), accounts=len(work),
                 suspects=len(suspects), delivery=self.settings.delivery.value)
        self._suspects = self._to_send_alone(suspects)
        return work

    def _to_send_alone(self, suspects: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """The suspects to send alone: none when there are too many for one culprit to be likely
        (each sent alone holds every other account up) and the crash is an ordinary one."""
        if len(suspects) <= self.settings.max_suspects_alone:
            return suspects
        log.warning("quarantine.skipped", suspects=len(suspects),
                    max_suspects_alone=self.settings.max_suspects_alone)
        return []

    def on_start(self) -> None:
        self._keep(self.keeper.boot(self._boot_work, self._suspects, self.clock.now()))
        self._boot_work, self._suspects = [], []
        self._arm_cleanup()
        self._arm_loop_check()
        self._check_pauses()  # at once: a disabled account is reported from the start
        self._listen_for_changes()
        self._arm_feed()
        if self.lease is not None:
            self.lease.start()
            self.lease.poke()  # place at once: the free buckets are taken now, not in a lease's fifth

    # -- suspects --------------------------------------------------------------------------
    # A crash charges an attempt to every message in flight. A poison message (its send kills
    # the process) is in flight at every crash, and so is, by bad luck or design, a slow
    # bystander: charged alike, both would end failed. So a message in flight at two crashes
    # in a row is sent alone at the next boot: its account is the only one running until its
    # outcome is recorded (`AccountKeeper`). A poison then kills the process with nothing else
    # in flight, and a bystander is sent and done with. Many suspects at once say the crash
    # was not a message's (every account was sending): sending each alone would only be a
    # long outage.

    def _read_boot_work(self) -> None:
        try:
            work = self.storage.open_work()
        except StorageError as error:
            log.error("quarantine.read_failed", error=str(error))
            work = []
        tell_if_alive(self.actor_ref, _BootWork(work))

    # -- stopping --------------------------------------------------------------------------

    def on_stop(self) -> None:
        if self.metrics is not None:
            self.metrics.detach(self.actor_ref)
        try:
            self._stop_in_order()
        finally:
            with _ON_LOOPS_LOCK:
                _ON_LOOPS.discard(self)
            self.closed.set()

    def _stop_in_order(self) -> None:
        """Stop in order, within `stop_timeout` and `STOP_GRACE` (plus a connection's opening)
        whatever the database does: release the accounts, let the writer commit what it holds,
        close the database and release its lock."""
        for name in list(self._timers):
            self._cancel_timer(name)
        if self._listener is not None:
            self._listener.stop()
        if self.loop is not None and self.loop.is_closed():
            self._loop_closed()
        for waiting in self._drains.take_all():
            waiting.fail(SupervisorStopped("the supervisor stopped before the queue drained"))
        self._release_accounts(self.deadlines.monotonic() + self.settings.stop_timeout)
        self.send_pool.shutdown()
        cut_at = self.deadlines.monotonic() + STOP_GRACE
        self.storage.cut_calls_at(cut_at)  # what is not answered by then waits for the next start
        self._stop_writer(cut_at)
        self._writer_pool.shutdown()
        self._stop_hooks()  # after the writer: its last commits' events are queued by then
        if self.lease is not None:  # its accounts released and recorded: its buckets go at once
            self.lease.stop(leave=True)
        self._pool.shutdown()
        # Connections are closed once no other thread can be using one (reads run on the pool).
        if self._pool.join(timeout=self._time_left(cut_at)) and self._writer_pool.join(
                timeout=self._time_left(cut_at)):
            self._close_storage()
        else:
            log.error("supervisor.stop_busy",
                      left="the database is left open: a read or a commit is still running")
        log.info("supervisor.stopped")

    def _release_accounts(self, deadline: float) -> None:
        """Release every account and wait, until `deadline`, for each to record its send in
        flight; what is still in flight after that stays `processing` for the next start. Once
        no send is under way, the accounts wait only for the database: if it has not answered
        them within `slow_commit_after`, the next start settles what it would have recorded.

        The one wait for mail inside a turn, bounded so: it holds one of the runtime's threads
        (at least two), the accounts whose reports it waits for take theirs on the others, and
        the writer has its own."""
        self.sends.take_called_off()  # counted from here: the summary is this stop's
        releasing = {command.incarnation.actor_urn for command in self.keeper.stop()
                     if isinstance(command, keeper.Release) and self._release(command)}
        releasing.update(self.keeper.giving_back())  # crashed, giving back what they held
        unsent_since: float | None = None  # since when no send has been under way
        while releasing:
            now = self.deadlines.monotonic()
            hung = self.sends.running_longer_than(0.0, now)
            unsent_since = None if hung else (now if unsent_since is None else unsent_since)
            unanswered = None if unsent_since is None else now - unsent_since
            if now >= deadline or (unanswered is not None and unanswered > self.settings.slow_commit_after):
                log.error("supervisor.stop_incomplete", timeout=self.settings.stop_timeout,
                          accounts=len(releasing), sends_in_flight=[mask_phone(phone) for phone in hung],
                          database_unanswered_for=None if hung else round(unanswered or 0.0, 1),
                          left="in flight: processing until the next start settles it")
                break
            report = self.wait_for_mail(min(deadline - now, STOP_LOOK))
            if isinstance(report, AccountReleased) or (isinstance(report, AccountCrashed)
                                                       and not report.releasing):
                releasing.discard(report.actor_urn)
        self._log_called_off()

    def _log_called_off(self) -> None:
        """One line for every send the stop called off before it began (waiting for a thread)."""
        count, phones = self.sends.take_called_off()
        if count:
            log.warning("supervisor.sends_deferred", sends=count, accounts=[mask_phone(p) for p in phones],
                        left="given back: sent after the next start")

    def _loop_closed(self) -> None:
        """Said once, when stopping: the sends still on the closed loop end (their messages are
        retried) so that the accounts can record them and be released."""
        assert self.loop is not None
        log.error("supervisor.loop_closed", sends_ended=end_sends_of_closed_loop(self.loop),
                  left="the open messages stay in the database for the next start",
                  hint="await room.stop() before the bot's event loop ends")

    def _stop_writer(self, cut_at: float) -> None:
        """The writer commits what it holds, if the database answers by `cut_at`."""
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            self.persistence.stop(timeout=self._time_left(cut_at))

    def _stop_hooks(self) -> None:
        """The hooks take the events still queued, within `Hooks.stop_timeout`."""
        if self.hooks is not None:
            self.hooks.stop()

    def _time_left(self, cut_at: float) -> float:
        """Until a call cut at `cut_at` has failed, a connection being opened included."""
        opening = max(self.settings.postgres.connect_timeout, self.settings.sqlite.busy_timeout)
        return max(0.0, cut_at - self.deadlines.monotonic()) + opening + STOP_JOIN

    def _close_storage(self) -> None:
        """Close every connection, then release the lock (the writer has stopped)."""
        with contextlib.suppress(pykka.ActorDeadError):
            self.persistence.stop()
        self.storage.close_all()
        self.lock.release()  # last: closing the locked file earlier would drop SQLite's own locks

    def on_failure(self, *exc_info: Any) -> None:
        # The supervisor itself failed on a tell: take everything down in order.
        self.on_stop()

    # -- commands ------------------------------------------------------------------------

    def admit(self, message: Any, reply: Reply | None) -> bool:
        """The one fast path: an enqueue command is checked in the caller's thread and handed to
        the writer, which answers the caller itself after the commit."""
        if not isinstance(message, _ENQUEUES):
            return False
        try:
            forward(self.persistence, self._insert(message), reply)
        except (ValidationError, pykka.ActorDeadError) as error:
            _refuse(message, reply, error)
        return True

    def _insert(self, command: Enqueue | EnqueueBatch | Broadcast) -> Insert:
        return validate_insert(command, self.clock.now(), self.settings.limits)

    def receive(self, message: Any, reply: Reply | None) -> None:
        try:
            self._command(message, reply)
        except Exception as error:
            if reply is None:  # the supervisor is the root: a bad tell is refused and logged
                log_unanswered(type(message).__name__, error)
                return
            raise

    def _command(self, message: Any, reply: Reply | None) -> None:
        match message:
            case GetMessage(message_id):
                self._read(reply, self.storage.get, message_id)
            case ListMessages(phone, status, limit, after_id):
                self._read(reply, self.storage.list_messages, phone, status, limit, after_id)
            case GetStats():
                self._read(reply, self.storage.stats)
            case CancelMessage(message_id):
                forward(self.persistence, CancelRow(message_id), reply)
            case RequeueMessage(message_id):
                forward(self.persistence, RequeueRow(message_id), reply)
            case CleanupNow(older_than):
                self._cleanup_now(older_than, reply)
            case Drain(timeout):
                self._drain(reply, timeout)
            case GetHealth():
                _answer(reply, self._health())
            case GetGauges(per_account):
                self._read_gauges(reply, per_account)
            case ResumeAccount(phone):
                # The writer lifts the pause; its answer comes back as mail (no wait in this turn).
                self.ask_actor(self.persistence, LiftPause(phone), _Resuming(phone, reply))
            case _:
                self._internal(message)

    def _internal(self, message: Any) -> None:
        match message:
            case StartAccountsFor(messages):
                self._route(messages)
            case AccountCrashed(phone, urn, error, releasing):
                self._keep(self.keeper.crashed(phone, urn, error, releasing, self.clock.monotonic()))
            case AccountIdle(phone, urn, wake_at, seen):
                # Retired only if nothing was routed to it since: the writer routes under this lock.
                if self.directory.retire_if_idle(phone, urn, seen) is not None:
                    self._keep(self.keeper.idle(phone, urn, wake_at))
                    if self._trim.retired(self.deadlines.monotonic()):
                        self.run_job(_trim_memory)  # off this turn: a trim walks every arena
            case AccountReleased(phone, urn):
                self._keep(self.keeper.released(phone, urn, self.clock.monotonic()))
            case SuspectSettled(phone, urn):
                self._keep(self.keeper.suspect_settled(phone, urn))
            case AccountPaused(phone, until):
                self._pauses.noted(phone, until)
            case _BootWork(work):
                self._keep(self.keeper.work_read(work, self.clock.now()))
            case CleanupDue():
                self.persistence.tell(DeleteFinished(earlier(self.clock.now(), self.settings.retention)))
                self.persistence.tell(TrimChanges(earlier(self.clock.now(), FEED_KEPT)))
                self._arm_cleanup()
            case SleepersDue():
                self._keep(self.keeper.wake(self.clock.now()))
            case PauseCheckDue():
                self._check_pauses()
            case PausesRead(pauses, asked):
                self._pauses_read(pauses, asked)
            case DrainCheckDue():
                self._count_open()
            case ChangesDue():
                self._read_feed()
            case FeedRead():
                self._feed_read(message)
            case _LoopCheckDue():
                self._check_loop()
            case OpenCounted(count, number):
                self._open_counted(count, number)
            case Answer(token=_Resuming()):
                self._pause_lifted_here(message)
            case Answer(token=_DrainBarrier()):
                self._barrier_passed(message)
            case _BucketsToMove(take, give):
                self._move_buckets(take, give)
            case Answer(token=_Taking()):
                self._buckets_taken(message)
            case _BucketWork(work):
                self._keep(self.keeper.work_found(work, self.clock.now()))
            case Answer(token=_HandingBack(buckets)):
                self._handed_back(buckets, message)
            case _LeaseLost(buckets):
                self._keep(self.keeper.buckets_lost(buckets))
            case _:
                raise ValidationError(f"unknown command {type(message).__name__}")

    def _cleanup_now(self, older_than: timedelta | None, reply: Reply | None) -> None:
        if older_than is not None:  # not `or`: timedelta(0), falsy, means every finished row
            check_timedelta("CleanupNow.older_than", older_than)
        retention = self.settings.retention if older_than is None else older_than
        forward(self.persistence, DeleteFinished(earlier(self.clock.now(), retention)), reply)

    def _read(self, reply: Reply | None, query: Callable[..., Any], *args: Any) -> None:
        """A read on the runtime's threads, answered from there; the supervisor goes on meanwhile."""

        def read() -> None:
            try:
                _answer(reply, query(*args))
            except Exception as error:  # noqa: BLE001 - to the asker, whatever it is
                if reply is not None:
                    reply.fail(error)

        self.run_job(read)

    def _health(self) -> Health:
        failing, error = self.health.snapshot(self.deadlines.monotonic(), self.settings.slow_commit_after)
        slow = self.sends.running_longer_than(self.settings.slow_send_after, self.deadlines.monotonic())
        disabled = tuple(sorted(mask_phone(p) for p in self._pauses.disabled()))
        abandoned = self._abandoned()
        return Health(degraded=failing or bool(disabled) or abandoned.count > 0, last_error=error,
                      accounts_running=len(self.directory),
                      parked_accounts=tuple(sorted(mask_phone(p) for p in self.keeper.parked)),
                      slow_sends=tuple(mask_phone(p) for p in slow), disabled_accounts=disabled,
                      abandoned_sends=abandoned, node=self.holdings.node,
                      buckets_held=None if self.lease is None else len(self.holdings.held()))

    def _read_gauges(self, reply: Reply | None, per_account: bool) -> None:
        """`Metrics`' reading: what this turn knows, then the database's counts on the runtime's
        threads (as `GetStats` is read)."""
        renewed_at = None if self.lease is None else self.lease.renewed_at
        lag = None if renewed_at is None else max(0.0, self.deadlines.monotonic() - renewed_at)
        running, parked, disabled = len(self.directory), len(self.keeper.parked), len(self._pauses.disabled())
        buckets = None if self.lease is None else len(self.holdings.held())

        def read() -> Gauges:
            now = self.clock.now()
            stats, work = self.storage.stats(), self.storage.open_by_account(now)
            oldest = {w.phone: w.oldest_due_at for w in work if w.oldest_due_at is not None}
            return Gauges(by_status=stats.by_status, oldest_due_at=min(oldest.values(), default=None),
                          at=now, by_account=stats.by_account if per_account else {},
                          oldest_by_account=oldest if per_account else {}, accounts_running=running,
                          parked=parked, disabled=disabled, buckets_held=buckets, lease_renew_lag=lag)

        self._read(reply, read)

    def _abandoned(self) -> AbandonedSends:
        left = self.send_pool.abandoned()
        oldest = None if left.oldest_since is None else self.deadlines.monotonic() - left.oldest_since
        return AbandonedSends(count=left.count, oldest=oldest, bound=self.settings.abandoned_send_threads,
                              past_bound=left.past_bound)

    # -- account lifecycle -------------------------------------------------------------------

    def _route(self, messages: Sequence[Message]) -> None:
        """Committed rows whose account was not running when the writer looked: to it if it has
        started since, else to the keeper (which starts it, or lets it sleep until they are due)."""
        by_account: dict[str, list[Message]] = {}
        for message in messages:
            by_account.setdefault(message.phone, []).append(message)
        found: list[tuple[str, datetime]] = []
        for phone, mine in by_account.items():
            running = self.directory.deliver_to(phone)
            if running is not None:
                tell_if_alive(running, Arrived(mine))
            else:
                found.append((phone, min(m.available_at for m in mine)))
        self._keep(self.keeper.work_found(found, self.clock.now()))

    def _keep(self, commands: list[keeper.KeeperCommand]) -> None:
        """Carry out what the keeper decided."""
        for command in commands:
            match command:
                case keeper.Start(phone, recover, watch):
                    ref = self._start_account(phone, recover=recover, watch=watch)
                    self._keep(self.keeper.started(phone, ref))
                case keeper.Release():
                    self._release(command)
                case keeper.Unroute(phone, urn):
                    self.directory.remove_if(phone, urn)
                case keeper.Settle(phone):
                    self.persistence.tell(SettleInFlight(self.settings.delivery, phone))
                case keeper.WakeAt(at):  # an instant of the wall clock: a step of it moves the wake-up too
                    self._arm("sleepers", at, SleepersDue())
                case keeper.SuspectDeadline(phone, urn, seconds):
                    self._arm("suspect", seconds, SuspectSettled(phone, urn))
                case keeper.ReadWork():  # enqueued meanwhile: in the database, read who has work now
                    self.run_job(self._read_boot_work)
                case keeper.HandBack(buckets):
                    assert self.holdings.node is not None
                    self.ask_actor(self.persistence, ReleaseBuckets(self.holdings.node, sorted(buckets)),
                                   _HandingBack(buckets))
                case keeper.Log(level, event, fields):
                    getattr(log, level)(event, **fields)
                    if event == keeper.RESTARTED and self.metrics is not None:
                        self.metrics.restarted()

    def _release(self, command: keeper.Release) -> bool:
        """No more rows to that incarnation; told to release. False if it had stopped already."""
        ref = cast(pykka.ActorRef[AccountActor], command.incarnation)
        self.directory.remove_if(command.phone, ref.actor_urn)
        return _told(ref, Release())

    def _ensure_account(self, phone: str) -> None:
        """Its pause was lifted: start it, unless it runs (or may not run now)."""
        self._keep(self.keeper.wanted(phone))

    def _start_account(self, phone: str, *, recover: bool = False,
                       watch: int | None = None) -> pykka.ActorRef[AccountActor]:
        deps = AccountDeps(
            sender=self.sender, persistence=self.persistence, supervisor=self.actor_ref,
            storage=self.storage, pool=self._pool, send_pool=self.send_pool, deadlines=self.deadlines,
            clock=self.clock, rng=self.rng, settings=self.settings.account,
            delivery=self.settings.delivery, loop=self.loop,
            pacing=self.settings.pacing_by_account.get(phone, self.settings.pacing), sends=self.sends,
            metrics=self.metrics)
        ref = AccountActor.start(self._pool, phone, deps, recover=recover, watch=watch)
        self.directory.add(phone, ref)
        return ref

    def _pause_lifted_here(self, answer: Answer) -> None:
        """`ResumeAccount`'s pause is lifted (or the writer failed): the rest, then the answer."""
        resuming: _Resuming = answer.token
        if answer.error is not None:
            if resuming.reply is not None:
                resuming.reply.fail(answer.error)
            return
        _answer(resuming.reply, self._resume(resuming.phone, bool(answer.value)))

    def _resume(self, phone: str, lifted: bool) -> bool:
        if lifted:
            self._pauses.lifted_here(phone)
            log.info("account.unpaused", account=mask_phone(phone))
            running = self.directory.get(phone)
            if running is not None:
                tell_if_alive(running, PauseLifted())
            else:
                self._ensure_account(phone)  # a disabled account may have stopped while idle
        if self.keeper.place(phone) is not Place.PARKED:
            return lifted
        self._unpark(phone)
        return True

    def _unpark(self, phone: str) -> None:
        self._keep(self.keeper.resume(phone))  # it reads its pause, if one was set meanwhile

    # -- buckets (a node of several) ------------------------------------------------------

    def _move_buckets(self, take: list[int], give: list[int]) -> None:
        """What the lease keeper placed: hand over `give` (their accounts release first), take
        `take` (one take at a time: the next renewal asks again for what is left)."""
        if self.keeper.phase is keeper.Phase.STOPPING:
            return
        if give:
            self._keep(self.keeper.hand_over(give))
        if take and not self._taking and self.holdings.node is not None:
            self._taking = True
            self.ask_actor(self.persistence, TakeBuckets(self.holdings.node, take, self.settings.delivery),
                           _Taking())

    def _buckets_taken(self, answer: Answer) -> None:
        """Taken (the writer holds them from its commit): the keeper first, so that a row routed
        from here on starts its account, then the accounts with work, read after the take."""
        self._taking = False
        if answer.error is not None:
            log.warning("buckets.take_failed", error=str(answer.error))
            return
        taken: BucketsTaken = answer.value
        if not taken.epochs:
            return
        buckets = set(taken.epochs)
        log.info("buckets.taken", buckets=sorted(buckets), settled=len(taken.settled))
        self._keep(self.keeper.buckets_won(buckets, [], self.clock.now()))
        ref, storage = self.actor_ref, self.storage

        def read() -> None:
            try:
                work = [(phone, due) for phone, due in storage.open_work() if bucket_of(phone) in buckets]
            except StorageError as error:
                log.error("buckets.read_failed", error=str(error),
                          left="their accounts start as their rows are routed or their pauses read")
                return
            tell_if_alive(ref, _BucketWork(work))

        self.run_job(read)

    def _handed_back(self, buckets: frozenset[int], answer: Answer) -> None:
        if answer.error is not None:
            log.warning("buckets.hand_back_failed", buckets=sorted(buckets), error=str(answer.error),
                        left="they go when this node's lease expires or it stops")
        else:
            log.info("buckets.handed_over", buckets=sorted(buckets))

    # -- timers ---------------------------------------------------------------------------

    def _arm(self, name: str, when: float | datetime, message: Any, clock: Clock | None = None) -> None:
        """One timer per `name`: `message` comes back to the supervisor after `when` seconds, or
        at the instant `when` of the wall clock."""
        self._cancel_timer(name)
        clock, back = clock or self.clock, functools.partial(tell_if_alive, self.actor_ref, message)
        if isinstance(when, datetime):
            self._timers[name] = clock.call_at(when, back)
        else:
            self._timers[name] = clock.call_later(when, back)

    def _cancel_timer(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _arm_cleanup(self) -> None:
        if self.settings.cleanup_interval is not None:
            self._arm("cleanup", self.settings.cleanup_interval, CleanupDue())

    def _arm_loop_check(self) -> None:
        if self.loop is not None:  # on real time: a closed loop is noticed whatever `clock` is
            self._arm("loop", LOOP_CHECK, _LoopCheckDue(), clock=self.deadlines)

    def _check_loop(self) -> None:
        """The bot's loop closed without `stop()`: nothing sent on it could ever end, and the
        database stays owned. Told to stop (not stopped here: stopping waits for the accounts)."""
        if self.loop is not None and self.loop.is_closed():
            self.actor_ref.stop(block=False)
        else:
            self._arm_loop_check()

    # -- pauses lifted elsewhere, disabled accounts --------------------------------------------

    def _check_pauses(self) -> None:
        """Read every pause in force on the runtime's threads; `_pauses_read` takes the answer."""
        asked, ref, now, storage = self._pauses.asking(), self.actor_ref, self.clock.now(), self.storage

        def read() -> None:
            try:
                pauses: list[AccountPause] | StorageError = storage.pauses(now)
            except StorageError as error:
                pauses = error
            tell_if_alive(ref, PausesRead(pauses, asked))

        self.run_job(read)

    def _pauses_read(self, pauses: Sequence[AccountPause] | StorageError, asked: int) -> None:
        if isinstance(pauses, StorageError):
            log.warning("pauses.read_failed", error=str(pauses))
        else:
            # A node watches the pauses of its own accounts (another node reports its own).
            pauses = [pause for pause in pauses if self.keeper.holds(pause.phone)]
            for phone in self._pauses.read(pauses, asked, self.clock.now()):
                self._pause_lifted(phone)
            disabled = self._pauses.disabled_to_report(pauses, self.clock.monotonic())
            if disabled:
                log.warning("accounts.disabled", count=len(disabled),
                            accounts=[mask_phone(phone) for phone in disabled[:20]],
                            lift="postroom resume ACCOUNT --database URL, or ResumeAccount(ACCOUNT)")
        if self.settings.pause_check_interval is not None:
            self._arm("pauses", self.settings.pause_check_interval, PauseCheckDue())

    def _pause_lifted(self, phone: str) -> None:
        """Lifted by another process: the account reads its pause again (starting, if need be)."""
        log.info("account.pause_lifted", account=mask_phone(phone))
        running = self.directory.get(phone)
        if running is not None:
            tell_if_alive(running, ReadPauseAgain())
        else:
            self._ensure_account(phone)

    # -- changes other processes made ---------------------------------------------------------

    def _listen_for_changes(self) -> None:
        """PostgreSQL: a thread LISTENs and wakes the supervisor at each producer's commit."""
        ref = self.actor_ref
        if self.settings.feed_listen:
            self._listener = self.storage.listener(lambda: tell_if_alive(ref, ChangesDue()))
        if self._listener is not None:
            self._listener.start()

    def _arm_feed(self) -> None:
        listening = self._listener is not None
        interval = self.settings.feed_safety_interval if listening else self.settings.feed_poll_interval
        self._arm("feed", interval, ChangesDue(), clock=self.deadlines)

    def _read_feed(self) -> None:
        """Read the change feed on the runtime's threads (one read at a time; a wake-up during
        it reads again after it); `_feed_read` takes the answer."""
        feed = self._feed
        if feed.reading:
            feed.again = True
            return
        feed.reading, feed.again = True, False
        ref, storage, deadlines = self.actor_ref, self.storage, self.deadlines

        def read() -> None:
            try:
                result = feed.read(storage, deadlines.monotonic())
            except StorageError as error:
                result = FeedRead((), (), (), more=False, error=error)
            tell_if_alive(ref, result)

        self.run_job(read)

    def _feed_read(self, read: FeedRead) -> None:
        """Obey what other processes wrote: new and requeued rows to their accounts (started or
        put to sleep as the writer's own), cancels out of the windows, pauses read again; an
        account's pause set or lifted by an operator (`postroom pause`, `resume`) restarts it
        if it was parked, as `ResumeAccount` does (paused, it sends nothing)."""
        self._feed.reading = False
        if read.error is not None:
            log.warning("feed.read_failed", error=str(read.error))
        if read.buckets_freed and self.lease is not None:
            self.lease.poke()  # a node let buckets go: place them now, not at the next renewal
        self._route(read.messages)
        for phone, message_id in read.cancelled:
            running = self.directory.get(phone)
            if running is not None:
                tell_if_alive(running, Cancelled(message_id))
        for phone in read.paused:
            if self.keeper.place(phone) is Place.PARKED:
                self._unpark(phone)
            else:
                self._pause_lifted(phone)
        if read.more or self._feed.again:
            self._read_feed()
        else:
            self._arm_feed()

    # -- drains ---------------------------------------------------------------------------

    def _drain(self, reply: Reply | None, timeout: float | None) -> None:
        check_seconds("Drain timeout", timeout, optional=True)
        if reply is None:
            return  # told: nobody waits for the answer
        deadline = None if timeout is None else self.deadlines.monotonic() + timeout
        # Held weakly: a caller that gives up (its ask timed out) leaves no waiter behind.
        key = self._drains.add(weak_reply(reply), deadline)
        # The enqueues the caller sent before went straight to the writer: count once it has them.
        try:
            self.ask_actor(self.persistence, WriteBarrier(), _DrainBarrier(key))
        except pykka.ActorDeadError:
            self._drains.remove(key)
            raise SupervisorStopped("the supervisor is stopping") from None
        self._arm_drain_check()

    def _barrier_passed(self, answer: Answer) -> None:
        key = answer.token.key
        if answer.error is None:
            if self._drains.passed(key, self._counts):
                self._count_open()
        elif (reply := self._drains.remove(key)) is not None:
            reply.fail(answer.error)  # the writer could not commit what came before: a StorageError

    @property
    def drains_waiting(self) -> int:
        """`Drain` asks still waiting for an answer (one whose caller gave up may count until
        the next count of the open messages forgets it)."""
        return len(self._drains)

    def _count_open(self) -> None:
        if self._counting or not self._drains.prune():
            return
        self._counts += 1
        self._counting, ref, storage, number = True, self.actor_ref, self.storage, self._counts

        def count() -> None:
            try:
                open_messages: int | StorageError = storage.count_open()
            except StorageError as error:
                open_messages = error
            tell_if_alive(ref, OpenCounted(open_messages, number))

        self.run_job(count)

    def _open_counted(self, count: int | StorageError, number: int) -> None:
        self._counting = False
        if isinstance(count, StorageError):
            for waiting in self._drains.take_all():
                waiting.fail(count)
            return
        for waiting in self._drains.counted(count, number, self.deadlines.monotonic()):
            waiting.answer(count)
        self._arm_drain_check()

    def _arm_drain_check(self) -> None:
        """While drains wait: count again shortly, and by the earliest deadline."""
        if self._drains:
            deadline = self._drains.next_deadline()
            delay = DRAIN_POLL if deadline is None else min(
                DRAIN_POLL, max(0.0, deadline - self.deadlines.monotonic()))
            self._arm("drain", delay, DrainCheckDue(), clock=self.deadlines)


@dataclass(frozen=True, slots=True)
class _Resuming:
    """The token of `ResumeAccount`'s pause lift: whose, and whom to answer."""

    phone: str
    reply: Reply | None


@dataclass(frozen=True, slots=True)
class _DrainBarrier:
    """The token of a drain's write barrier: which drain (its key in `DrainWaiters`)."""

    key: int


@dataclass(frozen=True, slots=True)
class _BucketsToMove:
    """The lease keeper placed the buckets: take these, hand those over."""

    take: list[int]
    give: list[int]


@dataclass(frozen=True, slots=True)
class _LeaseLost:
    """The node's lease was lost: these buckets are no longer held."""

    buckets: set[int]


@dataclass(frozen=True, slots=True)
class _Taking:
    """The token of a `TakeBuckets`."""


@dataclass(frozen=True, slots=True)
class _BucketWork:
    """The accounts with work of buckets just taken, read after the take."""

    work: list[tuple[str, datetime]]


@dataclass(frozen=True, slots=True)
class _HandingBack:
    """The token of a `ReleaseBuckets`: which buckets."""

    buckets: frozenset[int]


@dataclass(frozen=True, slots=True)
class _LoopCheckDue:
    """Time to look whether the bot's event loop has closed."""


@dataclass(frozen=True, slots=True)
class _BootWork:
    """The accounts with work, read after the suspects were sent alone."""

    work: list[tuple[str, datetime]]


def _trim_memory() -> None:
    release_free_memory()


def _told(ref: pykka.ActorRef[Any], message: Any) -> bool:
    """Told, or False if the actor had stopped already."""
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True


def _answer(reply: Reply | None, value: Any) -> None:
    if reply is not None:
        reply.answer(value)


def _refuse(command: Any, reply: Reply | None, error: Exception) -> None:
    """An enqueue refused at the door: the asker gets the error; a tell is logged."""
    if reply is None:
        log_unanswered(type(command).__name__, error)
    else:
        reply.fail(error)


class AsyncPostroom:
    """The supervisor for asyncio bots: every command is awaitable and never blocks the loop.

        room = await AsyncPostroom.start("sqlite:///postroom.db", send)   # send may be async
        message_id = await room.enqueue(phone="+15550001", user_id="42", text="hi")
        await room.stop()
    """

    def __init__(self, ref: pykka.ActorRef[Supervisor]) -> None:
        self.ref = ref
        self._stopping: asyncio.Future[bool] | None = None  # the stop under way, which every call awaits

    @classmethod
    async def start(cls, database: str | Any, sender: Sender | AsyncSender,
                    **options: Any) -> AsyncPostroom:
        """Start a supervisor whose coroutine sender (if any) runs on the running loop."""
        loop = asyncio.get_running_loop()
        check_sender(sender, loop)  # at once, without a thread
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
        """Degraded or not: database faults, disabled, parked and slow accounts."""
        return await self.ask(GetHealth())  # type: ignore[no-any-return]

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: in-flight sends (coroutines on this loop too) finish and are recorded.

        Returns once the supervisor has stopped (within its `stop_timeout` and a few seconds,
        whatever the database does), or after `timeout` seconds if given: the stop then goes on
        in the background (`supervisor.stop_pending` is logged), and a later call waits for it.
        It raises nothing.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(asyncio.to_thread(self.ref.stop, block=True))
        try:
            await asyncio.wait_for(asyncio.shield(self._stopping), timeout)
        except TimeoutError:
            log.warning("supervisor.stop_pending", timeout=timeout)


_RUNNING: weakref.WeakSet[pykka.ActorRef[Supervisor]] = weakref.WeakSet()
#: The running supervisors given an event loop (whose loop may close without `stop()`).
_ON_LOOPS: set[Supervisor] = set()
_ON_LOOPS_LOCK = threading.Lock()


def _stop_supervisors_of_closed_loops() -> None:
    """Stop, and wait for, every supervisor whose event loop has closed without `stop()`, so
    that a new one may own its database at once (rather than after its `LOOP_CHECK`)."""
    with _ON_LOOPS_LOCK:
        running = list(_ON_LOOPS)
    for supervisor in running:
        if supervisor.loop is not None and supervisor.loop.is_closed():
            supervisor.actor_ref.stop(block=False)  # or it was stopping already: wait all the same
            supervisor.closed.wait(supervisor.settings.stop_timeout + STOP_JOIN)


@atexit.register
def _stop_forgotten_supervisors() -> None:
    """At interpreter exit, stop supervisors the host forgot, so in-flight work is recorded."""
    for ref in list(_RUNNING):
        with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
            ref.stop(timeout=10)


