"""SendPool: one shared pool of daemon threads that grows only to the sends running at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError

import pytest

from actors.sending import SendFuture, SendPool


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_sequential_sends_reuse_one_thread() -> None:
    pool = SendPool()
    try:
        for n in range(20):
            assert pool.submit(lambda x: x * 2, n).result(timeout=5) == n * 2
            wait_until(lambda: pool.idle == 1)  # the thread is back before the next send
        assert pool.threads == 1
    finally:
        pool.shutdown()


def test_grows_to_concurrent_sends_then_reuses_them() -> None:
    pool = SendPool()
    release = threading.Event()
    try:
        futures = [pool.submit(lambda _: release.wait(5), n) for n in range(3)]
        assert pool.threads == 3  # none waited behind another
        release.set()
        assert all(f.result(timeout=5) for f in futures)
        wait_until(lambda: pool.idle == 3)
        more = [pool.submit(lambda x: x, n) for n in range(3)]
        assert [f.result(timeout=5) for f in more] == [0, 1, 2]
        assert pool.threads == 3
    finally:
        pool.shutdown()


def test_an_error_reaches_the_caller() -> None:
    pool = SendPool()
    try:
        def fail(_: object) -> None:
            raise KeyboardInterrupt  # even a BaseException is an outcome, not a dead thread

        with pytest.raises(KeyboardInterrupt):
            pool.submit(fail, None).result(timeout=5)
        assert pool.submit(lambda x: x, 7).result(timeout=5) == 7
    finally:
        pool.shutdown()


def test_idle_threads_exit() -> None:
    pool = SendPool(idle_exit=0.05)
    futures = [pool.submit(lambda x: x, n) for n in range(4)]
    assert [f.result(timeout=5) for f in futures] == [0, 1, 2, 3]
    wait_until(lambda: pool.threads == 0)
    assert pool.submit(lambda x: x + 1, 1).result(timeout=5) == 2  # and it starts again
    pool.shutdown()


def test_a_hung_sender_is_a_daemon_thread_and_others_still_run() -> None:
    pool = SendPool()
    never = threading.Event()
    hung = pool.submit(lambda _: never.wait(), None)
    try:
        assert pool.submit(lambda x: x, 1).result(timeout=5) == 1
        assert not hung.done()
        sending = [t for t in threading.enumerate() if t.name == "postroom-send"]
        assert sending and all(t.daemon for t in sending)  # it cannot hold the process at exit
    finally:
        never.set()
        pool.shutdown()


def test_shutdown_stops_idle_threads_and_refuses_new_sends() -> None:
    pool = SendPool()
    assert pool.submit(lambda x: x, 1).result(timeout=5) == 1
    wait_until(lambda: pool.idle == 1)
    pool.shutdown()
    wait_until(lambda: pool.threads == 0)
    with pytest.raises(RuntimeError):
        pool.submit(lambda x: x, 1)


# -- SendFuture: the part of concurrent.futures.Future a ticket uses, with its rules -------------


def test_a_send_future_cancelled_before_it_begins_never_runs_and_tells_its_callbacks_once() -> None:
    future, seen = SendFuture(), []
    future.add_done_callback(seen.append)
    assert future.cancel() and future.cancel()  # a second cancel is answered True, nothing more
    assert future.cancelled() and future.done() and seen == [future]
    assert not future.set_running_or_notify_cancel()
    future.set_result("late")  # ignored: it ended cancelled
    assert seen == [future] and future.cancelled()
    with pytest.raises(CancelledError):
        future.result(timeout=1)


def test_a_send_future_that_began_cannot_be_cancelled_and_ends_with_its_outcome() -> None:
    future, seen = SendFuture(), []
    assert future.set_running_or_notify_cancel()
    assert not future.cancel() and not future.done()
    future.add_done_callback(seen.append)
    error = ValueError("refused")
    future.set_exception(error)
    assert seen == [future] and future.exception() is error and not future.cancelled()
    with pytest.raises(ValueError):
        future.result()
    late: list[SendFuture] = []
    future.add_done_callback(late.append)  # already done: called at once
    assert late == [future]


def test_a_send_future_waits_for_its_result_and_times_out_without_it() -> None:
    future = SendFuture()
    with pytest.raises(TimeoutError):
        future.result(timeout=0.01)
    future.set_running_or_notify_cancel()
    threading.Timer(0.05, future.set_result, (42,)).start()
    assert future.result(timeout=5) == 42 and future.exception() is None


def test_cancel_and_begin_racing_agree_on_one_winner() -> None:
    """A cancel and the send's start from two threads: either it ran or it was cancelled."""
    for _ in range(300):
        future, began = SendFuture(), []
        start = threading.Barrier(2)

        def begin(f: SendFuture = future, b: list[bool] = began, gate: threading.Barrier = start) -> None:
            gate.wait()
            b.append(f.set_running_or_notify_cancel())

        thread = threading.Thread(target=begin)
        thread.start()
        start.wait()
        cancelled = future.cancel()
        thread.join()
        assert cancelled != began[0]
        assert future.cancelled() == cancelled
