"""Senders, plain and `async def`.

Coroutine senders run on the bot's own loop (clients belong to the loop that made
them): a send is a task there (`run_on_loop`), cancelled when its send timeout
expires. A plain sender that returns an awaitable has it run there too
(`running_awaitables`). Whatever the send raises is its outcome, SystemExit and
KeyboardInterrupt included: a task re-raises those out of the loop's `run`, which would
end the bot, so they are caught inside the task (`_settle`). A loop that closes with
sends under way never ends them: whoever notices ends them (`end_sends_of_closed_loop`).
Awaitable commands are `actors.runtime.ask_async`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future as ConcurrentFuture
from typing import Any

from actors.errors import SenderReturnedAwaitable, SendTimeout
from postroom_common import Message, ValidationError
from postroom_common.logs import get_logger

log = get_logger("postroom.sender")

#: A plain sender: returns when delivered, raises to say what went wrong.
Sender = Callable[[Message], Any]


#: A coroutine sender: `async def send(message) -> None`.
AsyncSender = Callable[[Message], Awaitable[Any]]

#: The body of a send's task on the loop (`_settle`).
_Step = Coroutine[Any, Any, None]


def is_coroutine_sender(sender: Any) -> bool:
    """True for `async def` functions and objects whose `__call__` is one."""
    return inspect.iscoroutinefunction(sender) or inspect.iscoroutinefunction(
        getattr(sender, "__call__", None)  # noqa: B004 - a callable object's method
    )


def check_sender(sender: object, loop: asyncio.AbstractEventLoop | None) -> None:
    """`ValidationError` for a sender no send could ever call (None, a string, ...) and for
    an `async def` one with no loop to run on: refused at start, not at every send."""
    if not callable(sender):
        got = "None" if sender is None else f"a {type(sender).__name__}"
        raise ValidationError(f"sender must be a callable taking a Message (your delivery code), not {got}")
    if is_coroutine_sender(sender) and loop is None:
        raise ValidationError("an async sender needs loop=, the event loop it belongs to")


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
        if loop is None:
            _discard(result)
            if not warned.is_set():
                warned.set()
                log.error("sender.returned_awaitable", hint=SenderReturnedAwaitable.__doc__)
            raise SenderReturnedAwaitable()
        try:
            future = run_on_loop(lambda: result, loop)
        except RuntimeError:  # closed: the supervisor notices it and stops; the message is retried
            _discard(result)
            raise RuntimeError("the bot's event loop is closed") from None
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # the task, on the loop; the account reports the timeout itself
            raise SendTimeout(f"no answer from the awaitable within {timeout} s") from None

    return send


def _discard(awaitable: Awaitable[Any]) -> None:
    """A coroutine that will never run is closed, so Python does not warn it was never awaited."""
    if inspect.iscoroutine(awaitable):
        awaitable.close()


def submit_to_loop(sender: AsyncSender, message: Message,
                   loop: asyncio.AbstractEventLoop) -> ConcurrentFuture[Any]:
    """Run the coroutine sender on the bot's loop; `cancel()` on the result cancels the task.
    RuntimeError if the loop is closed (nothing was called)."""
    return run_on_loop(lambda: sender(message), loop)


def run_on_loop(make: Callable[[], Awaitable[Any]],
                loop: asyncio.AbstractEventLoop) -> ConcurrentFuture[Any]:
    """Await `make()` in a task on `loop`: the returned future ends as the awaitable does,
    whatever it raises (see the module's docstring). Cancelling either cancels the other.
    RuntimeError if the loop is closed (`make` is not called)."""
    outcome: ConcurrentFuture[Any] = ConcurrentFuture()
    step = _settle(make, outcome)
    _UNDER_WAY.add(loop, outcome, step)  # before it can run: a loop seen closed later ends it
    outcome.add_done_callback(functools.partial(_UNDER_WAY.discard, loop))
    try:
        loop.call_soon_threadsafe(_begin, loop, step, outcome)
    except RuntimeError:
        _UNDER_WAY.discard(loop, outcome)
        step.close()  # never started: nothing to warn about
        raise
    return outcome


def _begin(loop: asyncio.AbstractEventLoop, step: _Step, outcome: ConcurrentFuture[Any]) -> None:
    """On the loop: the send's task, tied to `outcome` both ways (as `run_coroutine_threadsafe`
    ties its own future, which would carry SystemExit out of the loop)."""
    if outcome.cancelled():  # timed out before the loop got to it
        step.close()
        return
    task = loop.create_task(step)
    task.add_done_callback(functools.partial(_task_ended, outcome))
    outcome.add_done_callback(functools.partial(_cancel_task, loop, task))


def _task_ended(outcome: ConcurrentFuture[Any], task: asyncio.Task[None]) -> None:
    if task.cancelled():  # by the loop (stopping), or by the send itself
        outcome.cancel()


def _cancel_task(loop: asyncio.AbstractEventLoop, task: asyncio.Task[None],
                 outcome: ConcurrentFuture[Any]) -> None:
    """`outcome` was cancelled (a send timeout): so is the task, unless the loop has closed."""
    if outcome.cancelled():
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(task.cancel)


async def _settle(make: Callable[[], Awaitable[Any]], outcome: ConcurrentFuture[Any]) -> None:
    """The task's body: `outcome` carries what the send did, and the task ends only with a
    return or its own cancellation (never with SystemExit, which would end the loop's `run`)."""
    try:
        result = await make()
    except asyncio.CancelledError:
        raise  # the task ends cancelled, and so does `outcome`
    except BaseException as error:  # noqa: BLE001 - SystemExit too: the send's outcome, not the bot's end
        _end_send(outcome, error=error)
    else:
        _end_send(outcome, result)


def _end_send(outcome: ConcurrentFuture[Any], result: Any = None, *,
              error: BaseException | None = None) -> bool:
    """Settle `outcome` unless it already is (cancelled by a timeout meanwhile); True if this did."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if error is None:
            outcome.set_result(result)
        else:
            outcome.set_exception(error)
        return True
    return False


class _SendsOnLoops:
    """The sends under way on each loop (outcome and task body). A loop closed while some
    were (`loop.close()` drops its tasks unrun) would leave them, and whoever waits for
    them, waiting forever."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sends: dict[asyncio.AbstractEventLoop, dict[ConcurrentFuture[Any], _Step]] = {}

    def add(self, loop: asyncio.AbstractEventLoop, outcome: ConcurrentFuture[Any],
            step: _Step) -> None:
        with self._lock:
            self._sends.setdefault(loop, {})[outcome] = step

    def discard(self, loop: asyncio.AbstractEventLoop, outcome: ConcurrentFuture[Any]) -> None:
        with self._lock:
            sends = self._sends.get(loop)
            if sends is not None:
                sends.pop(outcome, None)
                if not sends:
                    del self._sends[loop]

    def take(self, loop: asyncio.AbstractEventLoop) -> dict[ConcurrentFuture[Any], _Step]:
        with self._lock:
            return self._sends.pop(loop, {})


_UNDER_WAY = _SendsOnLoops()


def end_sends_of_closed_loop(loop: asyncio.AbstractEventLoop) -> int:
    """Every send still under way on `loop`, which is closed, ends with an error now (nothing
    will ever run it): its message is retried. How many there were."""
    assert loop.is_closed(), "a running loop's sends end by themselves"
    ended = 0
    for outcome, step in _UNDER_WAY.take(loop).items():
        if inspect.getcoroutinestate(step) == inspect.CORO_CREATED:
            step.close()  # its task never ran: nothing to warn about (a begun one is left to the GC)
        ended += _end_send(outcome, error=RuntimeError("the bot's event loop closed before the send ended"))
    return ended
