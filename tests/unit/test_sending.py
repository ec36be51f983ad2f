"""SendPool: one shared pool of daemon threads that grows only to the sends running at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from actors.sending import SendPool


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
