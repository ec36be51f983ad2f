"""The injectable clocks."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from actors.clock import REJOIN_RATE, FakeClock, SystemClock


def test_fake_clock_fires_due_timers_in_order() -> None:
    """advance() fires exactly the timers that fell due, earliest first."""
    clock = FakeClock()
    fired: list[str] = []
    clock.call_later(2, lambda: fired.append("b"))
    clock.call_later(1, lambda: fired.append("a"))
    clock.call_later(5, lambda: fired.append("c"))
    start = clock.now()
    clock.advance(2)
    assert fired == ["a", "b"]
    assert clock.now() - start == timedelta(seconds=2)
    assert clock.pending_timers() == 1


def test_fake_clock_cancel() -> None:
    """A cancelled timer never fires."""
    clock = FakeClock()
    fired: list[int] = []
    handle = clock.call_later(1, lambda: fired.append(1))
    handle.cancel()
    clock.advance(10)
    assert fired == []


def test_system_clock_runs_timers_on_one_thread() -> None:
    """SystemClock fires call_later callbacks, cancelled ones excepted."""
    clock = SystemClock()
    done = threading.Event()
    never: list[int] = []
    clock.call_later(0.01, lambda: never.append(1)).cancel()
    clock.call_later(0.02, done.set)
    assert done.wait(5)
    assert never == []
    assert clock.now().tzinfo is not None


class _Payload:
    """Stands for what a send's timeout callback holds: its future and message."""


def test_cancelled_timers_neither_pile_up_nor_hold_their_callbacks() -> None:
    """A send arms a 60 s timeout and cancels it at once: 100,000 sends must not leave
    100,000 heap entries (nor what their callbacks reference) for the collector to scan."""
    import gc
    import weakref

    clock = FakeClock()
    payload = _Payload()
    held = weakref.ref(payload)
    clock.call_later(60, lambda payload=payload: None).cancel()
    del payload
    gc.collect()
    assert held() is None  # the cancelled handle let go of its callback

    live = [clock.call_later(30, lambda: None) for _ in range(10)]
    for _ in range(100_000):
        clock.call_later(60, lambda: None).cancel()
    entries = len(clock._timers._heap)
    assert entries <= 2 * clock._timers.SWEEP_AT, entries
    assert clock.pending_timers() == len(live)
    fired: list[int] = []
    clock.call_later(1, lambda: fired.append(1))
    clock.advance(100)
    assert fired == [1] and clock.pending_timers() == 0


def test_system_clock_survives_a_timer_centuries_ahead() -> None:
    """A timer in the year 9999 (more seconds than the platform's wait accepts) does not kill
    the timer thread: a timer due soon after it still fires."""
    clock = SystemClock()
    far = clock.call_later(timedelta(days=365 * 7975).total_seconds(), lambda: None)
    looped = threading.Event()
    clock.call_later(0.01, looped.set)  # after it, the far timer is the only one to wait for
    assert looped.wait(5)
    done = threading.Event()
    clock.call_later(0.05, done.set)
    assert done.wait(5)
    far.cancel()


def test_system_clock_survives_a_failing_callback() -> None:
    """A callback that raises is logged; the timers after it still fire."""
    clock = SystemClock()
    done = threading.Event()

    def fail() -> None:
        raise RuntimeError("a bug in a timer's owner")

    clock.call_later(0.01, fail)
    clock.call_later(0.02, done.set)
    assert done.wait(5)


def test_a_step_forward_fires_the_wall_clock_timers_it_passed() -> None:
    """`jump` steps the wall clock alone: the `call_at` timers it passed fire, `call_later`'s
    (monotonic) do not."""
    clock = FakeClock()
    fired: list[str] = []
    clock.call_at(clock.now() + timedelta(hours=1), lambda: fired.append("in an hour"))
    clock.call_at(clock.now() + timedelta(hours=3), lambda: fired.append("in three hours"))
    clock.call_later(3600, lambda: fired.append("an hour of monotonic time"))
    mono = clock.monotonic()
    clock.jump(timedelta(hours=2))
    assert fired == ["in an hour"]
    assert clock.monotonic() == mono
    assert clock.pending_timers() == 2 and clock.pending_timers(wall_clock_only=True) == 1


def test_after_a_step_back_now_goes_on_at_the_rejoin_rate_until_the_wall_clock_catches_up() -> None:
    """A step back is not followed: `now()` never goes back, runs at `REJOIN_RATE` while ahead
    of the wall clock, and follows it again once it caught up."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    clock = FakeClock(start)
    fired: list[int] = []
    clock.call_at(start + timedelta(seconds=1), lambda: fired.append(1))
    clock.jump(timedelta(hours=-1))
    assert clock.now() == start
    clock.advance(1.0)
    assert clock.now() == start + timedelta(seconds=REJOIN_RATE)
    assert fired == []
    clock.advance(1.0 / REJOIN_RATE - 1.0)
    assert fired == [1]  # due after its second at the rejoin rate, not after the hour
    gap = 3600 - 1.0  # seconds `now()` is still ahead of the wall clock
    clock.advance(gap / (1 - REJOIN_RATE))
    rejoined = clock.now()
    assert rejoined == start + timedelta(seconds=1 + gap * REJOIN_RATE / (1 - REJOIN_RATE))
    clock.advance(10)
    assert clock.now() == rejoined + timedelta(seconds=10)  # the wall clock's pace again


class _SteppedWall:
    """The host's wall clock (POSIX seconds), stepped by hand; counts its reads."""

    def __init__(self) -> None:
        self.step = timedelta(0)
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return time.time() + self.step.total_seconds()


def test_the_timer_thread_follows_a_step_forward_of_the_wall_clock() -> None:
    """A `call_at` timer an hour ahead fires on the timer thread once the wall clock steps two
    hours forward, within a look at the wall clock."""
    wall = _SteppedWall()
    clock = SystemClock(wall=wall, wall_check=0.02)
    done = threading.Event()
    clock.call_at(clock.now() + timedelta(hours=1), done.set)
    clock.call_later(0.01, lambda: None)  # the thread is asleep before the step
    wall.step = timedelta(hours=2)
    assert done.wait(5)


def test_the_timer_thread_fires_a_wall_clock_timer_after_a_step_back() -> None:
    """A `call_at` timer due shortly fires on the timer thread even though the wall clock
    stepped an hour back meanwhile."""
    wall = _SteppedWall()
    clock = SystemClock(wall=wall, wall_check=0.02)
    done = threading.Event()
    clock.call_at(clock.now() + timedelta(seconds=0.05), done.set)
    wall.step = timedelta(hours=-1)
    assert done.wait(5)


def test_an_idle_timer_thread_looks_at_the_wall_clock_only_every_wall_check() -> None:
    """With timers far ahead the thread does not spin: no look at the wall clock while only
    monotonic timers wait, one per `wall_check` at most while a wall-clock timer does."""
    wall = _SteppedWall()
    clock = SystemClock(wall=wall, wall_check=0.05)
    clock.call_later(3600, lambda: None)
    reads = wall.reads
    threading.Event().wait(0.3)  # a span of real time over which to count the thread's wake-ups
    assert wall.reads == reads
    clock.call_at(clock.now() + timedelta(hours=1), lambda: None)
    reads = wall.reads
    threading.Event().wait(0.5)
    assert wall.reads - reads <= 0.5 / 0.05 + 3
