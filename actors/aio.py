"""postroom from asyncio: awaitable commands that never block the event loop.

Awaiting a pykka future blocks the loop (its `__await__` calls the blocking
`get()`). Here the supervisor answers into a future that hands the answer to the
loop with `call_soon_threadsafe`: no executor thread per waiter, and the loop
keeps running while thousands of commands are in flight.

Coroutine senders run on the bot's own loop (clients belong to the loop that
made them): the account actor submits the coroutine with
`run_coroutine_threadsafe` and waits for it in its own thread, cancelling it
when the send timeout expires.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future as ConcurrentFuture
from typing import Any

import pykka
from pykka._envelope import Envelope

from actors.errors import SenderReturnedAwaitable, SendTimeout
from postroom_common import Message
from postroom_common.logs import get_logger

log = get_logger("postroom.sender")

#: A plain sender: returns when delivered, raises to say what went wrong.
Sender = Callable[[Message], Any]


class _LoopFuture(pykka.ThreadingFuture[Any]):
    """A pykka future that passes its result on to an asyncio future, on that future's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: asyncio.Future[Any]) -> None:
        super().__init__()
        self._loop = loop
        self._target = target

    def set(self, value: Any = None) -> None:
        self._hand_over(_resolve, value)

    def set_exception(self, exc_info: Any = None) -> None:
        self._hand_over(_reject, exc_info[1] if exc_info else RuntimeError("unknown error"))

    def _hand_over(self, settle: Callable[[asyncio.Future[Any], Any], None], value: Any) -> None:
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(settle, self._target, value)


def _resolve(target: asyncio.Future[Any], value: Any) -> None:
    if not target.done():
        target.set_result(value)


def _reject(target: asyncio.Future[Any], error: BaseException) -> None:
    if not target.done():
        target.set_exception(error)


def ask_async(ref: pykka.ActorRef[Any], command: Any) -> asyncio.Future[Any]:
    """Send `command` to the actor; the returned future completes on the running loop."""
    loop = asyncio.get_running_loop()
    target: asyncio.Future[Any] = loop.create_future()
    if not ref.is_alive():
        raise pykka.ActorDeadError(f"{ref} is not alive")
    ref.actor_inbox.put(Envelope(command, reply_to=_LoopFuture(loop, target)))
    return target


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
