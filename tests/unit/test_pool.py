"""DaemonPool: daemon threads that grow on demand up to a cap, then queue jobs in order."""

from __future__ import annotations

import threading

import pytest

from actors.clock import FakeClock
from actors.pool import DaemonPool
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
        eventually(lambda: pool._idle == 2)
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


def test_with_a_clock_a_job_behind_a_busy_thread_waits_grow_after_before_the_pool_grows() -> None:
    clock = FakeClock()
    pool = DaemonPool("test-pool", max_threads=4, call_later=clock.call_later, grow_after=0.005)
    release = threading.Event()
    try:
        pool.run(lambda: release.wait(5) and None)  # an empty pool starts a thread at once
        assert pool.threads == 1
        done = threading.Event()
        pool.run(done.set)
        pool.run(lambda: None)
        assert pool.threads == 1 and not done.wait(0.05)  # no new thread before the delay
        assert clock.pending_timers() == 1  # one look armed for both jobs
        clock.advance(0.005)
        assert done.wait(5)
        assert pool.threads == 3  # one thread per job that was still waiting
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
        eventually(lambda: pool._idle == 1)
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
