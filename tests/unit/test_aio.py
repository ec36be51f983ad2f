"""Sends on the bot's loop: a coroutine sender's, a plain sender's awaitable result (bounded
by the send timeout), whatever they raise, and a loop that closes under them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from actors.aio import end_sends_of_closed_loop, running_awaitables, submit_to_loop
from actors.errors import PermanentError, SenderReturnedAwaitable, SendTimeout
from postroom_common import Message, Priority, Status

NOW = datetime(2030, 1, 1, tzinfo=UTC)
MESSAGE = Message(id=1, phone="+15550001", user_id="42", text="hi", attachment=None,
                  priority=Priority.NORMAL, status=Status.PROCESSING, created_at=NOW,
                  scheduled_at=None, available_at=NOW, attempts=1, max_attempts=5,
                  last_error=None, completed_at=None, updated_at=NOW)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in its own thread, as a bot's would."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(5)
    running.close()


def test_a_plain_result_passes_through() -> None:
    """A sender that returns a value is called as it is, with no loop needed."""
    assert running_awaitables(lambda m: m.id, None, 1.0)(MESSAGE) == 1


def test_an_awaitable_is_awaited_on_the_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The awaitable's value and exceptions are the call's."""

    async def answer(message: Message) -> int:
        if message.text == "boom":
            raise ValueError("boom")
        return message.id

    send = running_awaitables(lambda m: answer(m), loop, 5.0)
    assert send(MESSAGE) == 1
    with pytest.raises(ValueError, match="boom"):
        send(replace(MESSAGE, text="boom"))


def test_an_awaitable_past_the_timeout_is_cancelled(loop: asyncio.AbstractEventLoop) -> None:
    """A coroutine that outlives the send timeout raises SendTimeout and its task is cancelled."""
    cancelled = threading.Event()

    async def hang(message: Message) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(SendTimeout):
        running_awaitables(lambda m: hang(m), loop, 0.05)(MESSAGE)
    assert cancelled.wait(5)


def test_without_a_loop_an_awaitable_is_refused_and_closed() -> None:
    """No loop: SenderReturnedAwaitable (a TypeError and a PermanentError), the coroutine closed."""
    started = []

    async def send(message: Message) -> None:
        started.append(message.id)

    coroutines = []

    def plain(message: Message) -> object:
        coroutines.append(send(message))
        return coroutines[-1]

    with pytest.raises(TypeError) as refused:
        running_awaitables(plain, None, 1.0)(MESSAGE)
    assert isinstance(refused.value, SenderReturnedAwaitable)
    assert started == [] and coroutines[0].cr_frame is None  # closed, never run


@pytest.fixture
def closed_loop() -> asyncio.AbstractEventLoop:
    """An event loop already closed, as a bot's is once `asyncio.run()` returned."""
    loop = asyncio.new_event_loop()
    loop.close()
    return loop


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt()],
                         ids=["SystemExit", "KeyboardInterrupt"])
def test_system_exit_and_keyboard_interrupt_end_the_send_not_the_loop(
        loop: asyncio.AbstractEventLoop, raised: BaseException) -> None:
    """What a coroutine sender raises is the send's outcome, SystemExit and KeyboardInterrupt
    too; the loop goes on running the next send."""

    async def send(message: Message) -> str:
        if message.text == "boom":
            raise raised
        return "sent"

    assert submit_to_loop(send, replace(MESSAGE, text="boom"), loop).exception(timeout=5) is raised
    assert submit_to_loop(send, MESSAGE, loop).result(timeout=5) == "sent"


def test_system_exit_from_a_plain_senders_awaitable_is_the_sends(loop: asyncio.AbstractEventLoop) -> None:
    """SystemExit raised by the awaitable a plain sender returned comes out of the call (on the
    send thread, where the send pool makes it the outcome), and the loop goes on."""

    async def send(message: Message) -> int:
        if message.text == "boom":
            raise SystemExit(3)
        return message.id

    plain = running_awaitables(lambda m: send(m), loop, 5.0)
    with pytest.raises(SystemExit):
        plain(replace(MESSAGE, text="boom"))
    assert plain(MESSAGE) == 1


def test_a_task_cancelled_on_the_loop_cancels_the_send(loop: asyncio.AbstractEventLoop) -> None:
    """A send's task cancelled on the loop (`asyncio.run` ending) ends the send cancelled."""
    entered = threading.Event()

    async def hang(message: Message) -> None:
        entered.set()
        await asyncio.sleep(3600)

    outcome = submit_to_loop(hang, MESSAGE, loop)
    assert entered.wait(5)
    loop.call_soon_threadsafe(lambda: [task.cancel() for task in asyncio.all_tasks(loop)])
    with pytest.raises(concurrent.futures.CancelledError):
        outcome.result(timeout=5)


def test_a_closed_loop_takes_no_send_and_calls_no_sender(closed_loop: asyncio.AbstractEventLoop) -> None:
    """On a closed loop a send is refused with RuntimeError before the sender is called (no
    coroutine is left unawaited)."""
    called: list[int] = []

    async def send(message: Message) -> None:
        called.append(message.id)

    with pytest.raises(RuntimeError):
        submit_to_loop(send, MESSAGE, closed_loop)
    assert called == []


def test_a_plain_senders_awaitable_on_a_closed_loop_is_transient(
        closed_loop: asyncio.AbstractEventLoop) -> None:
    """A plain sender's awaitable with the bot's loop closed raises a RuntimeError (retried),
    never SenderReturnedAwaitable (failed for good), and the coroutine is closed unrun."""
    coroutines = []

    async def send(message: Message) -> None:
        raise AssertionError("never run")

    def plain(message: Message) -> object:
        coroutines.append(send(message))
        return coroutines[-1]

    with pytest.raises(RuntimeError, match="closed") as refused:
        running_awaitables(plain, closed_loop, 1.0)(MESSAGE)
    assert not isinstance(refused.value, PermanentError)
    assert coroutines[0].cr_frame is None


def test_sends_left_on_a_closed_loop_are_ended() -> None:
    """A loop closed with a send under way (`loop.close()` drops its task unrun): ending that
    loop's sends gives the send an error at once, once."""
    loop = asyncio.new_event_loop()
    outcome = submit_to_loop(lambda m: asyncio.sleep(3600), MESSAGE, loop)  # type: ignore[arg-type, return-value]
    loop.close()  # before it ever ran: the task was never even created
    assert not outcome.done()
    assert end_sends_of_closed_loop(loop) == 1
    assert "closed before the send ended" in str(outcome.exception(timeout=0))
    assert end_sends_of_closed_loop(loop) == 0


def test_a_send_cancelled_before_the_loop_got_to_it_never_calls_the_sender() -> None:
    """A send cancelled (timed out) before its loop ran it: the sender is never called."""
    called: list[int] = []

    async def send(message: Message) -> None:
        called.append(message.id)

    loop = asyncio.new_event_loop()
    try:
        outcome = submit_to_loop(send, MESSAGE, loop)
        assert outcome.cancel()
        loop.run_until_complete(asyncio.sleep(0))  # the loop gets to the send now
    finally:
        loop.close()
    assert called == []
