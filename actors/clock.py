"""Injectable time: the one seam for "now", intervals and timers.

Actors never call `datetime.now()` or start their own timer threads; they ask a
`Clock`. `SystemClock` serves every timer of the process from one thread;
`FakeClock` lets tests move time by hand and fires due timers synchronously.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from postroom_common.logs import get_logger

log = get_logger("postroom.clock")


class TimerHandle:
    """A pending `call_later`; `cancel()` makes it a no-op."""

    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        # Its heap entry stays until due (a send timeout: 60 s); what the callback holds
        # (a send's future, its message) must not stay with it.
        self.callback = _nothing


def _nothing() -> None:
    pass


def _fire(due: list[TimerHandle]) -> None:
    """Run callbacks; one that raises is logged and the others still run (the one timer thread
    serves every send timeout, retry, schedule and pause of the process: it must not die)."""
    for handle in due:
        try:
            handle.callback()
        except Exception:  # logged: a timer's failure is its owner's business, not the thread's
            log.exception("timer.callback_failed")


class Clock(Protocol):
    """Time as postroom sees it."""

    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for intervals."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run `callback` once after `delay` seconds, on a timer thread; it must not block."""
        ...


class _TimerQueue:
    """Deadline-ordered callbacks; shared by both clocks."""

    #: Heap entries before the first sweep of cancelled ones.
    SWEEP_AT = 1024

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._sweep_at = self.SWEEP_AT

    def push(self, deadline: float, handle: TimerHandle) -> None:
        if len(self._heap) >= self._sweep_at:
            self._sweep()
        heapq.heappush(self._heap, (deadline, next(self._seq), handle))

    def _sweep(self) -> None:
        """Drop cancelled entries once the heap has doubled since the last sweep.

        Nearly every send arms a timeout and cancels it a moment later; left until due,
        the heap would hold every send of the last timeout's length, and every full garbage
        collection, all threads stopped, would scan them all.
        Amortised, a sweep costs each push O(1).
        """
        self._heap = [entry for entry in self._heap if not entry[2].cancelled]
        heapq.heapify(self._heap)
        self._sweep_at = max(self.SWEEP_AT, 2 * len(self._heap))

    def pop_due(self, now: float) -> list[TimerHandle]:
        due = []
        while self._heap and self._heap[0][0] <= now:
            handle = heapq.heappop(self._heap)[2]
            if not handle.cancelled:
                due.append(handle)
        return due

    def next_deadline(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None


class SystemClock:
    """Wall-clock time; all timers run on one daemon thread, started on first use."""

    def __init__(self) -> None:
        self._timers = _TimerQueue()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(callback)
        deadline = time.monotonic() + max(0.0, delay)
        with self._cond:
            earliest = self._timers.next_deadline()
            self._timers.push(deadline, handle)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="postroom-timers", daemon=True)
                self._thread.start()
            if earliest is None or deadline < earliest:
                self._cond.notify()  # it sleeps until `earliest`: wake it only to sleep less
        return handle

    def _run(self) -> None:
        while True:
            with self._cond:
                deadline = self._timers.next_deadline()
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is None or wait > 0:
                    # The platform's limit: a timer in the year 9999 waits in several goes.
                    self._cond.wait(None if wait is None else min(wait, threading.TIMEOUT_MAX))
                    continue
                due = self._timers.pop_due(time.monotonic())
            _fire(due)


class FakeClock:
    """A clock tests move by hand; due timers fire in the thread that calls `advance`."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1, tzinfo=UTC)
        self._mono = 1000.0
        self._timers = _TimerQueue()
        self._lock = threading.RLock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(callback)
        with self._lock:
            self._timers.push(self._mono + max(0.0, delay), handle)
        return handle

    def advance(self, seconds: float) -> None:
        """Move time forward and fire every timer that fell due."""
        with self._lock:
            self._mono += seconds
            self._now += timedelta(seconds=seconds)
            due = self._timers.pop_due(self._mono)
        _fire(due)

    def pending_timers(self) -> int:
        """Timers not yet fired nor cancelled (for tests)."""
        with self._lock:
            return sum(1 for _, _, h in self._timers._heap if not h.cancelled)
