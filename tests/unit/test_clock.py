"""The injectable clocks."""

from __future__ import annotations

import threading
from datetime import timedelta

from actors.clock import FakeClock, SystemClock


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
