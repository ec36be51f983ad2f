"""Senders, plain and `async def`.

Coroutine senders run on the bot's own loop (clients belong to the loop that made
them): a send is submitted there with `run_coroutine_threadsafe`, and cancelled when
its send timeout expires. A plain sender that returns an awaitable has it run there
too (`running_awaitables`). Awaitable commands are `actors.runtime.ask_async`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future as ConcurrentFuture
from typing import Any

from actors.errors import SenderReturnedAwaitable, SendTimeout
from postroom_common import Message
from postroom_common.logs import get_logger

log = get_logger("postroom.sender")

#: A plain sender: returns when delivered, raises to say what went wrong.
Sender = Callable[[Message], Any]


#: A coroutine sender: `async def send(message) -> None`.
AsyncSender = Callable[[Message], Awaitable[Any]]


def is_coroutine_sender(sender: Any) -> bool:
    """True for `async def` functions and objects whose `__call__` is one."""
    return inspect.iscoroutinefunction(sender) or inspect.iscoroutinefunction(
        getattr(sender, "__call__", None)  # noqa: B004 - a callable object's method
    )


def running_awaitables(sender: Sender, loop: asyncio.AbstractEventLoop | None,
                       timeout: float | None) -> Sender:
    """`sender`, except that an awaitable it returns (a lambda around an `async def`, a
    decorator that lost the coroutine function) is run on `loop` and its outcome is the
    send's; with no loop it is refused with `SenderReturnedAwaitable`, never taken for a
    delivery. Called on a send thread, never on the loop's own."""
    warned = threading.Event()

    @functools.wraps(sender)
    def send(message: Message) -> Any:
        result = sender(message)
        if not inspect.isawaitable(result):
            return result
        if loop is None or loop.is_closed():
            _discard(result)
            if not warned.is_set():
                warned.set()
                log.error("sender.returned_awaitable", hint=SenderReturnedAwaitable.__doc__)
            raise SenderReturnedAwaitable()
        future = asyncio.run_coroutine_threadsafe(_awaited(result), loop)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # the task, on the loop; the account reports the timeout itself
            raise SendTimeout(f"no answer from the awaitable within {timeout} s") from None

    return send


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _discard(awaitable: Awaitable[Any]) -> None:
    """A coroutine that will never run is closed, so Python does not warn it was never awaited."""
    if inspect.iscoroutine(awaitable):
        awaitable.close()


def submit_to_loop(sender: AsyncSender, message: Message,
                   loop: asyncio.AbstractEventLoop) -> ConcurrentFuture[Any]:
    """Run the coroutine sender on the bot's loop; `cancel()` on the result cancels the task."""
    coroutine = sender(message)
    return asyncio.run_coroutine_threadsafe(coroutine, loop)  # type: ignore[arg-type]
