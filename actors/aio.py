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
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from concurrent.futures import Future as ConcurrentFuture
from typing import Any

import pykka
from pykka._envelope import Envelope

from storage import Message


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


def submit_to_loop(sender: AsyncSender, message: Message,
                   loop: asyncio.AbstractEventLoop) -> ConcurrentFuture[Any]:
    """Run the coroutine sender on the bot's loop; `cancel()` on the result cancels the task."""
    coroutine = sender(message)
    return asyncio.run_coroutine_threadsafe(coroutine, loop)  # type: ignore[arg-type]
