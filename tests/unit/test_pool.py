"""DaemonPool: daemon threads that grow on demand up to a cap, then queue jobs in order."""

from __future__ import annotations

import itertools
import queue
import threading

import pytest

from actors.clock import FakeClock
from actors.pool import BUSY_LOOKS, Abandoned, DaemonPool, JobRef
from tests.conftest import LogCapture, eventually


def idle_cpu() -> float:
    """A process CPU clock that never moves: the process is idle."""
    return 0.0


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


def test_with_a_clock_jobs_behind_a_stuck_thread_wait_grow_after_then_get_one_thread() -> None:
    """Jobs queued behind a thread that does not finish wait `grow_after`; then one thread is
    started for that stuck thread, and it runs the queued jobs in order."""
    clock = FakeClock()
    pool = DaemonPool("test-pool", max_threads=4, call_later=clock.call_later, grow_after=0.005,
                      cpu_time=idle_cpu)
    release = threading.Event()
    ran: list[int] = []
    try:
        pool.run(lambda: release.wait(5) and None)  # an empty pool starts a thread at once
        assert pool.threads == 1
        done = threading.Event()

        def last() -> None:
            ran.append(2)
            done.set()

        pool.run(lambda: ran.append(1))
        pool.run(last)
        assert pool.threads == 1 and not done.wait(0.05)  # no new thread before the delay
        assert clock.pending_timers() == 1  # one look armed for both jobs
        clock.advance(0.005)
        assert done.wait(5)
        assert pool.threads == 2 and ran == [1, 2]
    finally:
        release.set()
        pool.shutdown()


def test_with_a_clock_a_thread_that_keeps_finishing_jobs_is_not_given_company() -> None:
    """A look that finds the busy thread on a newer job than when it was armed starts nothing
    (the queue is moving); the next look, with no job finished meanwhile, starts one."""
    clock = FakeClock()
    pool = DaemonPool("test-pool", max_threads=4, call_later=clock.call_later, cpu_time=idle_cpu)
    first, second, took_second, done = (threading.Event() for _ in range(4))

    def the_second() -> None:
        took_second.set()
        second.wait(5)

    try:
        pool.run(lambda: first.wait(5) and None)
        pool.run(the_second)  # arms the look
        pool.run(done.set)
        first.set()
        assert took_second.wait(5)  # the thread moved on to the next job
        clock.advance(pool.grow_after)
        assert pool.threads == 1 and not done.is_set()
        clock.advance(pool.grow_after)  # nothing finished since: it is stuck
        assert done.wait(5) and pool.threads == 2
    finally:
        first.set()
        second.set()
        pool.shutdown()


def test_with_a_clock_threads_that_all_hang_double_at_each_look() -> None:
    """While no job finishes at all, each look starts a thread per busy one, up to the jobs queued."""
    clock = FakeClock()
    pool = DaemonPool("test-pool", max_threads=10, call_later=clock.call_later, cpu_time=idle_cpu)
    release = threading.Event()
    began = threading.Semaphore(0)

    def hang() -> None:
        began.release()
        release.wait(5)

    try:
        for _ in range(6):
            pool.run(hang)
        seen = [1]
        assert began.acquire(timeout=5)
        for _ in range(3):
            clock.advance(pool.grow_after)
            seen.append(pool.threads)
            for _ in range(seen[-1] - seen[-2]):
                assert began.acquire(timeout=5)  # the new threads took their jobs
        assert seen == [1, 2, 4, 6]
    finally:
        release.set()
        pool.shutdown()


def test_with_a_clock_a_thread_that_finishes_in_time_takes_the_waiting_job() -> None:
    clock = FakeClock()
    pool = DaemonPool("test-pool", max_threads=4, call_later=clock.call_later, cpu_time=idle_cpu)
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


def test_with_a_busy_process_a_stuck_thread_gets_company_only_after_busy_looks() -> None:
    """While the process keeps a core busy, jobs behind a thread that does not finish (it may
    be computing, or waiting for the GIL) wait `BUSY_LOOKS` looks, then get one thread."""
    clock = FakeClock()
    ticks = itertools.count()
    pool = DaemonPool("test-pool", max_threads=4, call_later=clock.call_later,
                      cpu_time=lambda: next(ticks) * pool.grow_after)  # one core, all the time
    release, began, done = threading.Event(), threading.Event(), threading.Event()

    def hang() -> None:
        began.set()
        release.wait(5)

    try:
        pool.run(hang)
        assert began.wait(5)
        pool.run(done.set)
        pool.run(lambda: None)
        for _ in range(BUSY_LOOKS - 1):
            clock.advance(pool.grow_after)
        assert pool.threads == 1 and not done.is_set()
        clock.advance(pool.grow_after)
        assert done.wait(5) and pool.threads == 2  # one, however many jobs wait
    finally:
        release.set()
        pool.shutdown()


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
