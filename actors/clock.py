"""Injectable time: the one seam for "now", intervals and timers.

Actors never call `datetime.now()` or start their own timer threads; they ask a
`Clock`. `SystemClock` serves every timer of the process from one thread;
`FakeClock` lets tests move time by hand and fires due timers synchronously.

Two kinds of timer: `call_later` waits a number of seconds on the monotonic clock (a
send's timeout, a poll); `call_at` waits for an instant of the wall clock (a schedule, a
retry, the end of a pause), so a step of the wall clock (a suspend, an NTP step) moves
it too. A step forward is followed at once (within `WALL_CHECK`); a step back is not:
`now()` never goes back, it goes on at `REJOIN_RATE` until the wall clock catches up, so
a retry due in a second is not held for the step's length.
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

#: Seconds at most between two looks at the wall clock while a `call_at` timer waits: a step
#: forward is noticed within this long.
WALL_CHECK = 1.0
#: The pace of `now()`, in seconds per monotonic second, while it is ahead of a wall clock that
#: stepped back: half speed closes the gap in twice the step's length, and meanwhile a wait on
#: the wall clock lasts at most twice as long as it says.
REJOIN_RATE = 0.5


class TimerHandle:
    """A pending `call_later` or `call_at`; `cancel()` makes it a no-op."""

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

    def call_at(self, when: datetime, callback: Callable[[], None]) -> TimerHandle:
        """Run `callback` once `now()` has reached `when` (however the wall clock steps), on a
        timer thread; it must not block."""
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


class _SteadyTime:
    """The wall clock as postroom reads it: it follows a step forward, never a step back.

    After a step back it goes on from where it was, at `REJOIN_RATE`, until the wall clock
    catches up: the deadlines it gave (a retry due in a second, a pause's end) keep their
    distance instead of moving away by the step, and it rejoins the host's time in the end
    (a schedule meanwhile is early by the gap at most). Kept as the offset of the wall clock
    from the monotonic one, which only a step changes.
    """

    def __init__(self, wall: float, mono: float) -> None:
        self._offset = wall - mono
        self._mono = mono
        self._lock = threading.Lock()

    def ahead(self, wall: float, mono: float) -> float:
        """Seconds `now()` is ahead of the wall clock, read as POSIX time `wall` at `mono`."""
        with self._lock:  # two readers at once must not lose a step back
            slowed = self._offset - max(0.0, mono - self._mono) * (1 - REJOIN_RATE)
            self._offset, self._mono = max(wall - mono, slowed), mono
            return self._offset - (wall - mono)


def _seconds_until(left: float, ahead: float) -> float:
    """Monotonic seconds until `now()`, ahead of the wall clock by `ahead`, has moved `left`
    seconds on (unless the wall clock steps meanwhile)."""
    slow = ahead / (1 - REJOIN_RATE)  # monotonic seconds until the wall clock catches up
    return left / REJOIN_RATE if left <= slow * REJOIN_RATE else slow + left - slow * REJOIN_RATE


class SystemClock:
    """Wall-clock time; all timers run on one daemon thread, started on first use.

    `wall` replaces the host's wall clock (POSIX seconds) and `wall_check` shortens
    `WALL_CHECK`, for tests that step the wall clock under the timer thread.
    """

    def __init__(self, *, wall: Callable[[], float] = time.time, wall_check: float = WALL_CHECK) -> None:
        self._wall = wall
        self._steady = _SteadyTime(wall(), time.monotonic())
        self._wall_check = wall_check
        self._timers = _TimerQueue()  # by monotonic deadline
        self._instants = _TimerQueue()  # `call_at`'s, by POSIX time
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._read()[0], UTC)

    def _read(self) -> tuple[float, float]:
        """`now()` as POSIX time, and how far ahead of the wall clock it is."""
        wall = self._wall()
        ahead = self._steady.ahead(wall, time.monotonic())
        return wall + ahead, ahead

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self._add(self._timers, time.monotonic() + max(0.0, delay), callback)

    def call_at(self, when: datetime, callback: Callable[[], None]) -> TimerHandle:
        return self._add(self._instants, when.timestamp(), callback)

    def _add(self, queue: _TimerQueue, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(callback)
        with self._cond:
            earliest = queue.next_deadline()
            queue.push(deadline, handle)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="postroom-timers", daemon=True)
                self._thread.start()
            if earliest is None or deadline < earliest:
                self._cond.notify()  # it sleeps until `earliest`: wake it only to sleep less
        return handle

    def _run(self) -> None:
        while True:
            with self._cond:
                wait = self._wait()
                if wait is None or wait > 0:
                    # The platform's limit: a timer in the year 9999 waits in several goes.
                    self._cond.wait(None if wait is None else min(wait, threading.TIMEOUT_MAX))
                    continue
                due = self._timers.pop_due(time.monotonic()) + self._instants.pop_due(self._read()[0])
            _fire(due)

    def _wait(self) -> float | None:
        """Seconds until the next timer is due, None if there is none; while a `call_at` timer
        waits, at most `wall_check` (the wall clock may step meanwhile)."""
        deadline, instant = self._timers.next_deadline(), self._instants.next_deadline()
        waits: list[float] = [] if deadline is None else [deadline - time.monotonic()]
        if instant is not None:
            now, ahead = self._read()
            waits.append(min(self._wall_check, _seconds_until(instant - now, ahead)))
        return min(waits, default=None)


class FakeClock:
    """A clock tests move by hand; due timers fire in the thread that calls `advance` or `jump`.

    `advance` moves both clocks; `jump` steps the wall clock alone, as a suspend or an NTP
    step does (`now()` follows a step forward at once and one back at `REJOIN_RATE`).
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._wall = start or datetime(2030, 1, 1, tzinfo=UTC)
        self._mono = 1000.0
        self._steady = _SteadyTime(self._wall.timestamp(), self._mono)
        self._timers = _TimerQueue()
        self._instants = _TimerQueue()
        self._lock = threading.RLock()

    def now(self) -> datetime:
        with self._lock:
            ahead = self._steady.ahead(self._wall.timestamp(), self._mono)
            return self._wall + timedelta(seconds=ahead) if ahead else self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(callback)
        with self._lock:
            self._timers.push(self._mono + max(0.0, delay), handle)
        return handle

    def call_at(self, when: datetime, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(callback)
        with self._lock:
            self._instants.push(when.timestamp(), handle)
        return handle

    def advance(self, seconds: float) -> None:
        """Move both clocks forward and fire every timer that fell due."""
        with self._lock:
            self._mono += seconds
            self._wall += timedelta(seconds=seconds)
        self._fire_due()

    def jump(self, by: timedelta) -> None:
        """Step the wall clock by `by`, forward or back, the monotonic clock standing still, and
        fire every timer that fell due."""
        with self._lock:
            self._wall += by
        self._fire_due()

    def _fire_due(self) -> None:
        with self._lock:
            due = self._timers.pop_due(self._mono) + self._instants.pop_due(self.now().timestamp())
        _fire(due)

    def pending_timers(self, *, wall_clock_only: bool = False) -> int:
        """Timers not yet fired nor cancelled (for tests); only `call_at`'s if asked."""
        queues = [self._instants] if wall_clock_only else [self._timers, self._instants]
        with self._lock:
            return sum(1 for queue in queues for _, _, h in queue._heap if not h.cancelled)
