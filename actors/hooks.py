"""Outcome hooks: the host's callbacks for a message's final outcome and an account's pauses.

The writer hands the events of each commit to a `HookDispatcher` (`submit`), which never
blocks it: the events wait in a bounded queue that one thread of the dispatcher's own
empties, calling each hook in turn. A plain hook runs on that thread; an `async def` one
is run on the host's event loop (`AsyncPostroom`), never awaited by the thread beyond a
bound of coroutines under way. A hook that raises is logged (`hook.failed`, the type of
its exception only) and the next event goes on; a hook too slow for the flow of events
fills the queue, and what no longer fits is dropped and counted (`hooks.dropped`), so that
neither the sends nor the writer ever wait for the host's code.

Events fire in the process whose writer committed them, once per final outcome: a stale
record (its attempt no longer holds the row) commits nothing and fires nothing.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future as ConcurrentFuture
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from actors.aio import is_coroutine_sender, run_on_loop
from actors.messages import (
    BucketsTaken,
    CancelRow,
    LiftPause,
    RecordAndClaim,
    Recorded,
    SettleInFlight,
    TakeBuckets,
)
from actors.privacy import mask_phone
from postroom_common import FINAL_STATUSES, Message, Status, ValidationError
from postroom_common.checks import check_count, check_seconds
from postroom_common.logs import get_logger

__all__ = ["AccountEvent", "AccountEventKind", "HookDispatcher", "Hooks", "OutcomeEvent"]

log = get_logger("postroom.hooks")

#: Seconds between two `hooks.dropped` warnings (each counts the events dropped since the last).
DROPPED_REPORT_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class OutcomeEvent:
    """A message reached a final status, as its transaction committed it."""

    message_id: int
    """The message."""
    account: str
    """Its sending account, whole (the host's own data; postroom logs it masked only)."""
    status: Status
    """COMPLETED, FAILED or CANCELLED."""
    error: str | None
    """The error stored with it (`last_error`, redacted as stored); None when delivered."""
    attempts: int
    """Attempts made (the one that ended it included)."""
    at: datetime
    """When the outcome was known (UTC)."""


class AccountEventKind(enum.StrEnum):
    """What happened to an account."""

    PAUSED = "paused"  # a rate limit or a suspension with a duration: it sends again at `until`
    DISABLED = "disabled"  # suspended without a duration: nothing is sent until a user lifts it
    LIFTED = "lifted"  # a user lifted its pause or disablement (`ResumeAccount`) before its end


@dataclass(frozen=True, slots=True)
class AccountEvent:
    """An account's pause, disablement or lifting, as committed."""

    account: str
    """The sending account, whole."""
    kind: AccountEventKind
    """Paused, disabled or lifted."""
    until: datetime | None
    """The end of a pause; None for a disablement and a lifting."""
    reason: str
    """What caused it: the exception's type ("RateLimited", "AccountSuspended"), or
    "ResumeAccount" for a lifting."""
    at: datetime
    """When it was committed (UTC)."""


#: A hook: called with one event; an `async def` one runs on the host's event loop.
OutcomeHook = Callable[[OutcomeEvent], Any]
AccountHook = Callable[[AccountEvent], Any]


@dataclass(frozen=True, slots=True)
class Hooks:
    """The host's callbacks, given to `Supervisor.start(..., hooks=)` or `AsyncPostroom.start`."""

    on_outcome: OutcomeHook | None = None
    """Called with an `OutcomeEvent` for each message completed, failed or cancelled."""
    on_account: AccountHook | None = None
    """Called with an `AccountEvent` for each account paused, disabled or lifted."""
    queue_size: int = 10_000
    """Events waiting for the hooks, at most; past it new events are dropped and counted."""
    concurrent_async: int = 100
    """`async def` hooks under way on the loop at once, at most; past it the dispatcher waits
    for one to end (and the queue fills meanwhile)."""
    stop_timeout: float = 5.0
    """Seconds a supervisor's stop gives the hooks to take the events still queued; those left
    then are counted as dropped."""

    def __post_init__(self) -> None:
        for name in ("on_outcome", "on_account"):
            hook = getattr(self, name)
            if hook is not None and not callable(hook):
                raise ValidationError(f"Hooks.{name} must be a callable taking one event, "
                                      f"not a {type(hook).__name__}")
        check_count("Hooks.queue_size", self.queue_size, minimum=1)
        check_count("Hooks.concurrent_async", self.concurrent_async, minimum=1)
        check_seconds("Hooks.stop_timeout", self.stop_timeout)

    @property
    def any(self) -> bool:
        """Some hook is registered."""
        return self.on_outcome is not None or self.on_account is not None

    @property
    def asynchronous(self) -> bool:
        """Some hook is `async def`: it needs the host's event loop."""
        return any(is_coroutine_sender(hook) for hook in (self.on_outcome, self.on_account))

    def check(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """`ValidationError` for an `async def` hook with no loop to run on (at start)."""
        if self.asynchronous and loop is None:
            raise ValidationError("an async hook needs the event loop it belongs to: start "
                                  "with AsyncPostroom.start (or Supervisor.start(..., loop=))")


Event = OutcomeEvent | AccountEvent
_STOP = object()


class HookDispatcher:
    """One thread calling the hooks, fed by a bounded queue that never makes the writer wait."""

    def __init__(self, hooks: Hooks, loop: asyncio.AbstractEventLoop | None = None) -> None:
        hooks.check(loop)
        self.hooks = hooks
        self.loop = loop
        self._queue: queue.Queue[Any] = queue.Queue(hooks.queue_size)
        self._async_slots = threading.BoundedSemaphore(hooks.concurrent_async)
        self._lock = threading.Lock()
        self.dropped = 0
        """Events dropped so far (the queue was full, or the stop left them)."""
        self._unreported = 0
        self._reported_at: float | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="postroom-hooks", daemon=True)
        self._thread.start()

    def submit(self, events: Sequence[Event]) -> None:
        """Queue the events of one commit; what does not fit is dropped, counted and reported
        (a warning at most every `DROPPED_REPORT_EVERY`). Never blocks."""
        dropped = 0
        for event in events:
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                dropped += 1
        if dropped:
            self._count_dropped(dropped, "the hooks are slower than the events: the queue is full")

    def stop(self) -> None:
        """Let the hooks take what is queued, for `Hooks.stop_timeout` at most; then count the
        rest as dropped. The thread (a daemon) is left to a hook still running then. Once."""
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + self.hooks.stop_timeout
        try:
            self._queue.put(_STOP, timeout=self.hooks.stop_timeout)
            stop_queued = True
        except queue.Full:
            stop_queued = False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        left = max(0, self._queue.qsize() - (1 if stop_queued and self._thread.is_alive() else 0))
        if left or self._unreported:  # the drops not yet reported are said now, not lost
            self._count_dropped(left, "the supervisor stopped before the hooks took them" if left
                                else "the hooks were slower than the events: the queue was full", force=True)

    @property
    def queued(self) -> int:
        """Events waiting for the hooks now."""
        return self._queue.qsize()

    def _count_dropped(self, count: int, why: str, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            self.dropped += count
            self._unreported += count
            if not force and self._reported_at is not None and now - self._reported_at < DROPPED_REPORT_EVERY:
                return
            self._reported_at, unreported, self._unreported = now, self._unreported, 0
        log.warning("hooks.dropped", events=unreported, total=self.dropped, why=why,
                    queue_size=self.hooks.queue_size)

    def _run(self) -> None:
        while (event := self._queue.get()) is not _STOP:
            self._call(event)

    def _call(self, event: Event) -> None:
        hook: Callable[[Any], Any] | None = (self.hooks.on_outcome if isinstance(event, OutcomeEvent)
                                             else self.hooks.on_account)
        name = "on_outcome" if isinstance(event, OutcomeEvent) else "on_account"
        if hook is None:
            return
        try:
            result = hook(event)
            if inspect.isawaitable(result):
                self._await_on_loop(result, name, event)
        except BaseException as error:  # noqa: BLE001 - the host's code (SystemExit too): logged, the next event goes on
            _failed(name, event, error)

    def _await_on_loop(self, awaitable: Awaitable[Any], name: str, event: Event) -> None:
        """Run an async hook's coroutine on the host's loop; the thread waits only while
        `concurrent_async` of them are under way."""
        if self.loop is None:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise ValidationError("a hook returned an awaitable, and there is no event loop to run it on")
        self._async_slots.acquire()
        try:
            future = run_on_loop(lambda: awaitable, self.loop)
        except RuntimeError:  # the loop is closed: nothing will ever run it
            self._async_slots.release()
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise
        future.add_done_callback(lambda done: self._async_ended(done, name, event))

    def _async_ended(self, future: ConcurrentFuture[Any], name: str, event: Event) -> None:
        self._async_slots.release()
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            _failed(name, event, error)


def _failed(name: str, event: Event, error: BaseException) -> None:
    """A hook raised: its type goes to the log, never its text (it may quote the message)."""
    log.error("hook.failed", hook=name, error=type(error).__name__, account=mask_phone(event.account),
              message_id=event.message_id if isinstance(event, OutcomeEvent) else None)


def events_of_commit(requests: Sequence[Any], outcomes: Sequence[Any], at: datetime) -> list[Event]:
    """What a commit of the writer made final or changed for an account, as events: the
    records it applied (COMPLETED, FAILED), the cancels it made, the rows its settlements
    failed (interrupted at-most-once, out of attempts, poison), the pauses it wrote and the
    pauses it lifted. A stale record, a refused cancel and a fenced write made nothing."""
    events: list[Event] = []
    for request, outcome in zip(requests, outcomes, strict=True):
        if type(outcome) is Recorded:  # an account's write (`RecordAndClaim`): nearly every request
            record = request.record
            if record is not None and outcome.applied and record.status in FINAL_STATUSES:
                events.append(OutcomeEvent(record.id, request.phone, record.status, record.error,
                                           record.attempt, record.at))
            if request.pause is not None and not outcome.fenced:
                pause = request.pause
                kind = AccountEventKind.DISABLED if pause.until is None else AccountEventKind.PAUSED
                events.append(AccountEvent(request.phone, kind, pause.until, pause.reason, at))
            if outcome.settled:
                events += _final(outcome.settled, at)
            continue
        match request, outcome:
            case CancelRow(), Message() as cancelled:
                events += _final([cancelled], at)
            case LiftPause(phone=phone), True:
                events.append(AccountEvent(phone, AccountEventKind.LIFTED, None, "ResumeAccount", at))
        events += _final(settled_by(request, outcome), at)
    return events


def settled_by(request: Any, outcome: Any) -> Sequence[Message]:
    """The rows a write of the writer settled (in flight when their sender was lost: a crash,
    a crashed account, a bucket taken over), as it settled them."""
    match request, outcome:
        case RecordAndClaim(), Recorded(settled=settled):
            return settled
        case SettleInFlight(), list() as settled:
            return settled
        case TakeBuckets(), BucketsTaken(settled=settled):
            return settled
    return ()


def _final(messages: Sequence[Message], at: datetime) -> list[Event]:
    return [OutcomeEvent(m.id, m.phone, m.status, m.last_error, m.attempts, m.completed_at or at)
            for m in messages if m.status in FINAL_STATUSES]
