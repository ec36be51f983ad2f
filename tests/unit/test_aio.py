"""A plain sender's awaitable result: run on the bot's loop, bounded by the send timeout."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from actors.aio import running_awaitables
from actors.errors import SenderReturnedAwaitable, SendTimeout
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
