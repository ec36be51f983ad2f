"""How a send runs: the threads plain senders run on, the ticket the writer starts a claimed
message's send with, and the watch over the sends under way.

An account must be able to give up on a sender that hangs, and Python cannot interrupt
a call: the call runs on another thread, and the account stops waiting for it. The pool
grows with the sends that are slow up to its cap (`send_threads`: thousands of accounts
with a slow sender must not cost thousands of threads), reuses idle threads and lets idle
ones exit. A thread whose send ran past its timeout is left to the sender, outside the
cap (up to `abandoned_send_threads`), so that hung senders never stop the other accounts.
An `async def` sender needs none of it: it runs on the bot's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any

import pykka

from actors.aio import is_coroutine_sender, submit_to_loop
from actors.clock import Clock, TimerHandle
from actors.errors import SendTimeout
from actors.pool import CallLater, DaemonPool, JobRef
from actors.runtime import tell_if_alive
from postroom_common import Message

#: Why a send called off by its account's release did not begin.
CALLED_OFF = "released before the send began"


class SendPool(DaemonPool):
    """A `DaemonPool` whose jobs answer through a future; past `max_threads`, sends wait in
    order for a thread (a send's timeout counts only once it has begun)."""

    def __init__(self, max_threads: int | None = None, idle_exit: float = 10.0, *,
                 call_later: CallLater | None = None, max_abandoned: int = 0) -> None:
        super().__init__("postroom-send", max_threads, idle_exit, call_later=call_later,
                         max_abandoned=max_abandoned)

    def submit(self, call: Callable[[Any], Any], argument: Any,
               on_begin: Callable[[SendFuture], None] | None = None) -> SendFuture:
        """Run `call(argument)` on an idle thread, a new one under the cap, or the first one
        free; `on_begin(future)` is called on that thread just before (a timeout counts from it)."""
        future = SendFuture()

        def send() -> None:
            if future.set_running_or_notify_cancel():
                if on_begin is not None:
                    on_begin(future)
                try:
                    future.set_result(call(argument))
                except BaseException as error:  # noqa: BLE001 - every outcome goes to the account
                    future.set_exception(error)

        self.run(send)
        return future


_PENDING, _RUNNING, _CANCELLED, _FINISHED = "pending", "running", "cancelled", "finished"


class SendFuture:
    """How one send on the pool ended: the part of `concurrent.futures.Future` a ticket uses
    (`add_done_callback`, `cancel`, `done`, `cancelled`, `exception`, `result`), with the
    same rules (a send that has begun cannot be cancelled; callbacks run once it is done, in
    the thread that ended it). Cheaper per send than a `Future`, which builds a `Condition`
    (two locks) for waiters a ticket never has: here the event a waiter needs is made only
    when someone waits."""

    __slots__ = ("_callbacks", "_error", "_lock", "_result", "_state", "_waiter")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _PENDING
        self._result: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[SendFuture], None]] = []
        self._waiter: threading.Event | None = None

    # -- the pool's side ----------------------------------------------------------------------

    def set_running_or_notify_cancel(self) -> bool:
        """The send begins: False if it was cancelled first (then it must not run)."""
        with self._lock:
            if self._state is _CANCELLED:
                return False
            self._state = _RUNNING
            return True

    def set_result(self, result: Any) -> None:
        self._end(_FINISHED, result, None)

    def set_exception(self, error: BaseException) -> None:
        self._end(_FINISHED, None, error)

    def _end(self, state: str, result: Any, error: BaseException | None, *,
             unless_begun: bool = False) -> bool:
        """Move to `state` (once: False if it already ended, or, `unless_begun`, if it runs)."""
        with self._lock:
            if self._state is _FINISHED or self._state is _CANCELLED or (
                    unless_begun and self._state is _RUNNING):
                return False
            self._state, self._result, self._error = state, result, error
            callbacks, self._callbacks, waiter = self._callbacks, [], self._waiter
        if waiter is not None:
            waiter.set()
        for callback in callbacks:
            callback(self)
        return True

    # -- the ticket's side --------------------------------------------------------------------

    def add_done_callback(self, callback: Callable[[SendFuture], None]) -> None:
        """Call `callback(self)` once done: now, in this thread, if it already is."""
        with self._lock:
            if self._state is not _FINISHED and self._state is not _CANCELLED:
                self._callbacks.append(callback)
                return
        callback(self)

    def cancel(self) -> bool:
        """Cancel a send that has not begun; False once it runs or ran."""
        return self._end(_CANCELLED, None, None, unless_begun=True) or self.cancelled()

    def done(self) -> bool:
        return self._state is _FINISHED or self._state is _CANCELLED

    def cancelled(self) -> bool:
        return self._state is _CANCELLED

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """What the sender raised, None if it returned (waiting up to `timeout` for the end)."""
        self._wait(timeout)
        return self._error

    def result(self, timeout: float | None = None) -> Any:
        """What the sender returned (waiting up to `timeout`); what it raised is raised."""
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._result

    def _wait(self, timeout: float | None) -> None:
        with self._lock:
            if self._state is not _FINISHED and self._state is not _CANCELLED and self._waiter is None:
                self._waiter = threading.Event()
            waiter = self._waiter
        if waiter is not None and not waiter.wait(timeout):
            raise TimeoutError(f"the send did not end within {timeout} s")
        if self._state is _CANCELLED:
            raise CancelledError("the send was cancelled before it began")


class SendWatch:
    """Which accounts have a send under way, and since when: `GetHealth` names those whose
    send has run too long (a sender that hangs with no send timeout). Also counts the sends
    called off before they began, for one line at a stop instead of one per account."""

    #: Accounts a summary of called-off sends names, at most.
    SAMPLE = 5

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}
        self._called_off = 0
        self._called_off_sample: list[str] = []

    def started(self, phone: str, monotonic: float) -> None:
        with self._lock:
            self._since[phone] = monotonic

    def ended(self, phone: str) -> None:
        with self._lock:
            self._since.pop(phone, None)

    def called_off(self, phone: str) -> None:
        """A send of `phone`'s was called off before it began (its account was released)."""
        with self._lock:
            self._called_off += 1
            if len(self._called_off_sample) < self.SAMPLE:
                self._called_off_sample.append(phone)

    def take_called_off(self) -> tuple[int, list[str]]:
        """How many sends were called off since the last take, and the first few phones."""
        with self._lock:
            taken = self._called_off, self._called_off_sample
            self._called_off, self._called_off_sample = 0, []
            return taken

    def running_longer_than(self, seconds: float, monotonic: float) -> list[str]:
        """The phones whose send began more than `seconds` ago, longest first."""
        with self._lock:
            return sorted((p for p, t in self._since.items() if monotonic - t > seconds),
                          key=self._since.__getitem__)


class SendTicket:
    """One send, prepared by an account and started by the writer once the claim is committed.

    The writer calls `start` after the commit (never before: nothing is sent before its
    claim is recorded), giving it the answer to the account's write: the account hears
    both together when the send ends, the answer first, in one turn. How it ended comes
    as `SendEnded` when the sender returned, raised or took longer than `timeout` (counted
    from when the send began: a send may wait for a thread of the capped pool), or as
    `SendNotBegun` when no thread could be started for it or it was called off before it
    began.
    """

    def __init__(self, account: pykka.ActorRef[Any], sender: Callable[[Message], Any],
                 pool: SendPool, loop: asyncio.AbstractEventLoop | None, deadlines: Clock,
                 timeout: float | None, watch: SendWatch, phone: str,
                 timed: Callable[[float], None] | None = None) -> None:
        self._account, self._sender, self._pool, self._loop = account, sender, pool, loop
        self._timed = timed  # told how many seconds the send took (the metrics' histogram)
        self._began_at: float | None = None  # monotonic, when timed
        self._deadlines, self.timeout, self._watch, self._phone = deadlines, timeout, watch, phone
        self.future: Future[Any] | SendFuture | None = None
        self.timed_out = False
        self._timer: TimerHandle | None = None
        self._job: JobRef | None = None  # the pool's name for the send while it runs
        self._lock = threading.Lock()
        self._called_off = False
        self._on_loop = False
        self._answer_write: Callable[[], None] | None = None

    def start(self, message: Message, answer_write: Callable[[], None]) -> None:
        """Hand `message` (committed PROCESSING) to the sender; returns at once. `answer_write`
        answers the account's write, just before it hears how the send ended. A ticket
        called off before this gives the message back instead (`SendNotBegun`)."""
        self._answer_write = answer_write
        not_begun: str | None = CALLED_OFF
        with self._lock:
            if not self._called_off:
                self._watch.started(self._phone, self._deadlines.monotonic())
                try:
                    if self._loop is not None and is_coroutine_sender(self._sender):
                        self.future = submit_to_loop(self._sender, message, self._loop)
                        self._on_loop = True
                        self._began()  # on the bot's loop it begins at once
                    else:
                        self.future = self._pool.submit(self._sender, message,
                                                        on_begin=lambda _: self._began())
                    not_begun = None
                except RuntimeError as error:  # no thread could be started, or the loop is closed
                    self._watch.ended(self._phone)
                    not_begun = str(error)
        if not_begun is not None:
            if self._called_off:
                self._watch.called_off(self._phone)
            self._report(SendNotBegun(self, not_begun))
        else:
            assert self.future is not None
            self.future.add_done_callback(self._ended)

    def call_off(self) -> None:
        """The account is released: a send that has not begun (not yet started by the writer,
        or waiting for a thread) never begins, and the account hears `SendNotBegun`. A send
        under way, or one on the bot's loop, runs to its end."""
        with self._lock:
            self._called_off = True
            future = None if self._on_loop else self.future
        if future is not None:
            future.cancel()  # refused once the send runs

    def _ended(self, future: Future[Any] | SendFuture) -> None:
        if future.cancelled() and self._called_off and not self._on_loop:
            self._watch.ended(self._phone)
            self._watch.called_off(self._phone)
            self._report(SendNotBegun(self, CALLED_OFF))
        else:
            self._report(SendEnded(self))

    def _report(self, mail: SendEnded | SendNotBegun) -> None:
        """Tell the account; the first report carries the write's answer ahead of it."""
        with self._lock:
            answer, self._answer_write = self._answer_write, None
        if answer is not None:
            answer()
        tell_if_alive(self._account, mail)

    def outcome(self) -> BaseException | None:
        """How the send ended: None if the sender returned, else what it raised (a
        `SendTimeout` past the timeout). Called once the account has `SendEnded`."""
        self._watch.ended(self._phone)
        if self._timer is not None:
            self._timer.cancel()
        if self._timed is not None and self._began_at is not None:
            self._timed(self._deadlines.monotonic() - self._began_at)
        future = self.future
        assert future is not None
        if self.timed_out and not future.done():
            future.cancel()  # a coroutine is cancelled; a thread is left to its sender
            return SendTimeout(f"no answer from the sender within {self.timeout} s")
        if future.cancelled():
            return RuntimeError("the send was cancelled (the bot's loop is stopping)")
        return future.exception()

    def _began(self) -> None:
        if self._timed is not None:
            self._began_at = self._deadlines.monotonic()
        if self.timeout is not None:
            if not self._on_loop:
                self._job = self._pool.current()
            self._timer = self._deadlines.call_later(self.timeout, self._time_out)

    def _time_out(self) -> None:
        self.timed_out = True
        if self._job is not None and self.timeout is not None:
            now = self._deadlines.monotonic()
            self._pool.abandon(self._job, since=now - self.timeout, now=now)  # the thread is the sender's
        self._report(SendEnded(self))


@dataclass(frozen=True, slots=True)
class SendEnded:
    """To the account: its send returned, raised, or ran out of time (see `SendTicket.outcome`)."""

    ticket: SendTicket


@dataclass(frozen=True, slots=True)
class SendNotBegun:
    """To the account: its send could not begin (no thread, the bot's loop closed)."""

    ticket: SendTicket
    error: str
