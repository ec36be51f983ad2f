"""DaemonPool: daemon threads that grow on demand up to a cap, then queue jobs in order."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from actors.clock import FakeClock
from actors.pool import STUCK_LOOKS, Abandoned, DaemonPool, JobRef
from tests.conftest import LogCapture, eventually


def test_at_the_cap_jobs_wait_in_order_and_the_threads_are_reused() -> None:
    pool = DaemonPool("test-pool", max_threads=2)
    release = threading.Event()
    ran: list[int] = []
    lock = threading.Lock()

    def job(n: int) -> None:
        if n < 2:
            release.wait(5)  # both threads held: jobs 2..9 must queue
        with lock:
            ran.append(n)

    try:
        for n in range(10):
            pool.run(lambda n=n: job(n))  # type: ignore[misc]
        assert pool.threads == 2
        assert ran == []
        release.set()
        eventually(lambda: len(ran) == 10)
        assert [n for n in ran if n >= 2] == list(range(2, 10))  # first queued, first run
        # The threads that drained the queue count as idle again: new jobs reuse them.
        eventually(lambda: pool.idle == 2)
        done = threading.Event()
        pool.run(done.set)
        assert done.wait(5) and pool.threads == 2
    finally:
        release.set()
        pool.shutdown()


def test_under_the_cap_a_job_never_waits_behind_a_busy_one() -> None:
    pool = DaemonPool("test-pool", max_threads=4)
    release = threading.Event()
    try:
        pool.run(lambda: release.wait(5) and None)
        pool.run(lambda: release.wait(5) and None)
        done = threading.Event()
        pool.run(done.set)
        assert done.wait(5)
        assert pool.threads == 3
    finally:
        release.set()
        pool.shutdown()


def test_with_a_clock_jobs_behind_a_stuck_thread_get_one_thread_once_it_stays_stuck() -> None:
    """Jobs queued behind a thread wait while looks find it on the same job fewer than
    `STUCK_LOOKS` times in a row; then one thread is started for it, and it runs the queued
    jobs in order."""
    clock = FakeClock()
    pool = DaemonPool("test-pool", max_threads=4, call_later=clock.call_later, grow_after=0.005)
    release, began, done = threading.Event(), threading.Event(), threading.Event()
    ran: list[int] = []

    def hang() -> None:
        began.set()
        release.wait(5)

    def last() -> None:
        ran.append(2)
        done.set()

    try:
        pool.run(hang)  # an empty pool starts a thread at once
        assert began.wait(5) and pool.threads == 1
        pool.run(lambda: ran.append(1))
        pool.run(last)
        assert clock.pending_timers() == 1  # one look armed for both jobs
        for _ in range(STUCK_LOOKS - 1):
            clock.advance(pool.grow_after)
        assert pool.threads == 1 and not done.is_set()
        clock.advance(pool.grow_after)
        assert done.wait(5)
        assert pool.threads == 2 and ran == [1, 2]
    finally:
        release.set()
        pool.shutdown()


def test_with_a_clock_a_thread_that_keeps_finishing_jobs_is_not_given_company() -> None:
    """A thread found on another job at each look is moving the queue: no thread is started
    for it; once looks find it on the same job `STUCK_LOOKS` times, one is."""
    clock = FakeClock()
    pool = DaemonPool("test-pool", max_threads=4, call_later=clock.call_later)
    gates = [threading.Event() for _ in range(STUCK_LOOKS + 1)]
    began = threading.Semaphore(0)
    done = threading.Event()

    def step(gate: threading.Event) -> None:
        began.release()
        gate.wait(5)

    try:
        for gate in gates:
            pool.run(lambda gate=gate: step(gate))  # type: ignore[misc]
        pool.run(done.set)
        for gate in gates[:-1]:
            assert began.acquire(timeout=5)
            clock.advance(pool.grow_after)  # each look finds it on a new job
            gate.set()
        assert began.acquire(timeout=5)
        assert pool.threads == 1 and not done.is_set()
        for _ in range(STUCK_LOOKS):
            clock.advance(pool.grow_after)
        assert done.wait(5) and pool.threads == 2
    finally:
        for gate in gates:
            gate.set()
        pool.shutdown()


def test_with_a_clock_each_stuck_thread_gets_one_thread_once() -> None:
    """Threads that all hang get one new thread each as they are found stuck, never two."""
    clock = FakeClock()
    pool = DaemonPool("test-pool", max_threads=10, call_later=clock.call_later)
    release = threading.Event()
    began = threading.Semaphore(0)

    def hang() -> None:
        began.release()
        release.wait(5)

    try:
        for _ in range(4):
            pool.run(hang)
        assert began.acquire(timeout=5)
        seen = [pool.threads]
        for _ in range(2 * STUCK_LOOKS):
            clock.advance(pool.grow_after)
            seen.append(pool.threads)
            for _ in range(seen[-1] - seen[-2]):
                assert began.acquire(timeout=5)  # the new thread took its job
        assert seen == [1, 1, 2, 2, 3]
    finally:
        release.set()
        pool.shutdown()


def test_with_a_clock_a_thread_that_finishes_in_time_takes_the_waiting_job() -> None:
    clock = FakeClock()
    pool = DaemonPool("test-pool", max_threads=4, call_later=clock.call_later)
    release = threading.Event()
    try:
        pool.run(lambda: release.wait(5) and None)
        done = threading.Event()
        pool.run(done.set)
        release.set()  # the busy thread finishes before grow_after: it takes the job
        assert done.wait(5)
        eventually(lambda: pool.idle == 1)
        clock.advance(1)
        assert pool.threads == 1
    finally:
        release.set()
        pool.shutdown()


def test_a_failing_job_is_logged_and_keeps_its_thread(logs: LogCapture) -> None:
    pool = DaemonPool("test-pool", max_threads=1)

    def fail() -> None:
        raise SystemExit("a job must not take a pool thread down with it")

    try:
        pool.run(fail)
        done = threading.Event()
        pool.run(done.set)
        assert done.wait(5)
        assert pool.threads == 1
        assert [e["pool"] for e in logs.events("pool.job_failed")] == ["test-pool"]
    finally:
        pool.shutdown()


def test_idle_threads_exit_and_shutdown_refuses_jobs() -> None:
    pool = DaemonPool("test-pool", max_threads=3, idle_exit=0.05)
    done = [threading.Event() for _ in range(3)]
    for event in done:
        pool.run(event.set)
    assert all(event.wait(5) for event in done)
    eventually(lambda: pool.threads == 0)
    again = threading.Event()
    pool.run(again.set)
    assert again.wait(5)
    pool.shutdown()
    eventually(lambda: pool.threads == 0)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.run(lambda: None)


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DaemonPool("test-pool", max_threads=0)


def test_abandoned_jobs_leave_the_cap_up_to_the_bound_then_count_with_one_warning(logs: LogCapture) -> None:
    """A job given up on stops counting against `max_threads` and the queue gets a thread; past
    `max_abandoned` the next ones count (a warning, at most once a minute, and `abandoned()`
    says how many); once they return, the pool is back to its cap and nothing is left over."""
    pool = DaemonPool("test-pool", max_threads=2, max_abandoned=1)
    release = threading.Event()
    running: queue.Queue[JobRef] = queue.Queue()

    def hang() -> None:
        ref = pool.current()
        assert ref is not None
        running.put(ref)
        release.wait(5)

    first_done, then_done = threading.Event(), threading.Event()
    try:
        pool.run(hang)
        pool.run(hang)
        a, b = running.get(timeout=5), running.get(timeout=5)
        pool.run(first_done.set)  # both threads hung: it waits
        assert pool.threads == 2 and not first_done.wait(0.05)
        pool.abandon(a, since=10.0, now=12.0)
        assert first_done.wait(5)  # a thread for the queue: the abandoned one no longer counts
        assert pool.abandoned() == Abandoned(count=1, oldest_since=10.0, past_bound=0)
        eventually(lambda: pool.idle == 1)
        pool.run(hang)
        c = running.get(timeout=5)
        pool.abandon(b, since=11.0, now=13.0)  # past the bound: it counts
        pool.abandon(c, since=12.0, now=14.0)
        pool.abandon(c, since=12.0, now=14.0)  # said twice: nothing changes
        assert pool.abandoned() == Abandoned(count=3, oldest_since=10.0, past_bound=2)
        pool.run(then_done.set)
        assert pool.threads == 3 and not then_done.wait(0.05)  # the cap is full of hung threads
        warned = logs.events("pool.abandoned_past_bound")
        assert [(e["abandoned"], e["bound"], e["counting"]) for e in warned] == [(2, 1, 1)]
        release.set()
        assert then_done.wait(5)
        eventually(lambda: pool.abandoned() == Abandoned(count=0, oldest_since=None, past_bound=0))
        eventually(lambda: pool.threads == 2)  # those over the cap exited
    finally:
        release.set()
        pool.shutdown()


def test_a_trickle_of_jobs_keeps_one_thread_and_lets_the_others_idle_out() -> None:
    """After a burst has started three threads, jobs run one at a time go to the thread idle
    last: the other two wait out `idle_exit` and exit (woken in turn, none ever would)."""
    pool = DaemonPool("test-pool", max_threads=3, idle_exit=0.2)
    release = threading.Event()
    try:
        for _ in range(3):
            pool.run(lambda: release.wait(5) and None)
        assert pool.threads == 3
        release.set()
        eventually(lambda: pool.idle == 3)
        deadline = time.monotonic() + 10
        while pool.threads > 1 and time.monotonic() < deadline:
            done = threading.Event()
            pool.run(done.set)
            assert done.wait(5)
        assert pool.threads == 1
    finally:
        release.set()
        pool.shutdown()
