"""ReplyFuture: pykka's future contract on one lock (every ask to the supervisor and the writer)."""

from __future__ import annotations

import queue
import threading
import time
import traceback

import pykka
import pytest

from actors._mailbox import DeferredReplyActor, ReplyFuture, Request


def test_a_value_set_before_get_is_returned_to_every_get() -> None:
    future = ReplyFuture()
    future.set(42)
    assert future.get() == 42 and future.get(timeout=0) == 42


def test_get_waits_for_the_answer_and_every_waiter_gets_it() -> None:
    future = ReplyFuture()
    got: list[object] = []
    waiters = [threading.Thread(target=lambda: got.append(future.get(timeout=10))) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.05)  # the waiters are blocked: nothing answered yet
    assert got == []
    future.set("done")
    for waiter in waiters:
        waiter.join(10)
    assert got == ["done"] * 3


def test_get_times_out_with_pykkas_timeout() -> None:
    future = ReplyFuture()
    with pytest.raises(pykka.Timeout):
        future.get(timeout=0.01)
    with pytest.raises(pykka.Timeout):
        future.get(timeout=0)
    future.set(1)  # an answer after a timeout still arrives for a later get
    assert future.get(timeout=0) == 1


def test_an_exception_is_raised_with_its_own_traceback() -> None:
    future = ReplyFuture()

    def fail() -> None:
        raise ValueError("bad phone")

    try:
        fail()
    except ValueError as error:
        future.set_exception((type(error), error, error.__traceback__))
    with pytest.raises(ValueError, match="bad phone") as raised:
        future.get()
    assert "fail" in "".join(traceback.format_tb(raised.value.__traceback__))


def test_it_is_answered_once() -> None:
    future = ReplyFuture()
    future.set(1)
    with pytest.raises(queue.Full):
        future.set(2)
    with pytest.raises(queue.Full):
        future.set_exception((ValueError, ValueError(), None))
    assert future.get() == 1


def test_pykkas_combinators_work_on_it() -> None:
    first, second = ReplyFuture(), ReplyFuture()
    mapped = first.map(lambda value: value * 10)
    joined = first.join(second)
    threading.Timer(0.02, lambda: (first.set(4), second.set(5))).start()
    assert mapped.get(timeout=10) == 40
    assert joined.get(timeout=10) == [4, 5]
    assert pykka.get_all([first, second], timeout=10) == [4, 5]


class Echo(DeferredReplyActor):
    def handle(self, request: Request) -> None:
        if request.message == "boom":
            raise KeyError("boom")
        request.answer(request.message)


def test_asks_to_a_deferred_reply_actor_use_it() -> None:
    ref = Echo.start()
    try:
        future = ref.ask("hello", block=False)
        assert isinstance(future, ReplyFuture)
        assert future.get(timeout=10) == "hello"
        with pytest.raises(KeyError):
            ref.ask("boom", timeout=10)
    finally:
        ref.stop()
