"""postroom's actor runtime: pykka actors that take turns on a shared pool of threads.

Every actor of postroom (the supervisor, the writer, one per account) is a `TurnActor`:
a pykka actor (a `pykka.ActorRef`, the `pykka.ActorRegistry`, `tell`, `ask`, `stop`
and pykka's hooks behave as pykka documents them) with no thread of its own. When
mail arrives and the actor is not already scheduled, a *turn* is queued on a
`TurnPool`; a turn handles up to `turn_length` messages, one at a time, and gives
the thread back early when a handler calls `end_turn()` (an account after starting
a send), so that 10,000 accounts share a few threads and each gets its turn.
Actors marked `urgent` (the supervisor, the writer) have their turns queued ahead of
the others: every account waits on them. Mail of a kind in an actor's `urgent_mail`
wakes it ahead of the others too (an account's window, just read).

Defining an actor:

    class Greeter(TurnActor):
        def receive(self, message: object, reply: Reply | None) -> None:
            if reply is not None:
                reply.answer(f"hello {message}")

    ref = Greeter.start(pool)
    ref.ask("world")           # 'hello world'

Replies
    `receive` gets the message and whom to answer: `None` for a `tell`, or a `Reply`
    for an `ask`. A handler answers when it chooses: at once, or later (the writer
    answers after the commit that covers the request). A reply is answered once;
    later answers are ignored. `ask` from outside an actor waits on a `ThreadFuture`
    (one lock); `ask_async` answers into the running asyncio loop (`LoopFuture`).
    Between actors nobody blocks: `ask_actor(target, message, token)` puts a
    `MailReply` on the request, and the answer comes back to the asker as an ordinary
    message, `Answer(token, value)` or `Answer(token, error=...)`, in order with its
    other mail.

Failure
    An exception raised by `receive` goes back to an asking caller (the actor goes
    on); after a `tell` it is a failure of the actor: pykka logs it, the actor stops
    and `on_failure` runs, unless the actor outlives it (`outlive`: an account gives
    back what it held by mail before it stops, and a turn never waits for mail). A
    `BaseException` (SystemExit, KeyboardInterrupt) stops every actor, as pykka's own
    loop does.

Stop
    `ref.stop()` queues pykka's stop message behind the mail already there; when it
    is handled, `on_stop` runs and later mail is refused with `ActorDeadError`.

Admission
    An actor may look at a message in the sender's thread before it is queued
    (`admit`); the supervisor uses it for its one documented fast path (enqueue
    commands go straight to the writer). Returning False queues the message as usual.

This module is the only place that uses pykka's names for implementors of actor
types (`_create_actor_inbox`, `_create_future`, `_start_actor_loop`, the envelope,
the stop message, `_handle_receive`, `_handle_failure`): pykka's major version is
pinned in pyproject.toml.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import logging
import queue
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast

import pykka
from pykka import ActorRegistry
from pykka import messages as pykka_messages
from pykka._envelope import Envelope
from pykka._threading import ThreadingFutureResult

from actors.pool import CallLater, DaemonPool

__all__ = [
    "Answer",
    "LoopFuture",
    "MailReply",
    "Reply",
    "ThreadFuture",
    "TurnActor",
    "TurnPool",
    "ask_async",
    "forward",
    "tell_if_alive",
    "weak_reply",
]


# -- replies ------------------------------------------------------------------------------


class Reply(Protocol):
    """Whom to answer: the caller of an `ask`. Answered once; later answers are ignored."""

    def answer(self, value: Any) -> None:
        """The value the asker gets."""
        ...

    def fail(self, error: BaseException) -> None:
        """The error the asker gets (raised in its `get()`, or carried by its `Answer`)."""
        ...


class ThreadFuture(pykka.Future[Any]):
    """pykka's future contract on one lock, released when the answer is set (and a `Reply`).

    pykka's `ThreadingFuture` waits on a `Condition` over an `RLock`: each ask allocates a
    waiter lock and each answer notifies through it. The writer answers every enqueue
    between two commits, so that work sat on every commit's path; this does it with one lock.
    """

    def __init__(self) -> None:
        super().__init__()
        self._result: ThreadingFutureResult | None = None
        self._unset = _thread.allocate_lock()
        self._unset.acquire()

    def get(self, *, timeout: float | None = None) -> Any:
        if self._result is None and self._get_hook is None:
            if not self._unset.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
                raise pykka.Timeout(f"{timeout} seconds")
            self._unset.release()  # for every other waiter, and every later get()
        if self._get_hook is not None:
            return pykka.Future.get(self, timeout=timeout)
        assert self._result is not None
        if self._result.exc_info is None:
            return self._result.value
        exc_type, exc_value, traceback = self._result.exc_info
        assert exc_type is not None
        error = exc_value if exc_value is not None else exc_type()
        raise error.with_traceback(traceback)

    def set(self, value: Any | None = None) -> None:
        self._settle(ThreadingFutureResult(value=value))

    def set_exception(self, exc_info: Any = None) -> None:
        self._settle(ThreadingFutureResult(exc_info=exc_info if exc_info is not None else sys.exc_info()))

    def set_get_hook(self, func: Any) -> None:
        if self._result is not None:
            raise queue.Full
        pykka.Future.set_get_hook(self, func)
        self._unset.release()

    def answer(self, value: Any) -> None:
        with contextlib.suppress(queue.Full):
            self.set(value)

    def fail(self, error: BaseException) -> None:
        with contextlib.suppress(queue.Full):
            self.set_exception((type(error), error, error.__traceback__))

    def _settle(self, result: ThreadingFutureResult) -> None:
        if self._result is not None or self._get_hook is not None:
            raise queue.Full  # as pykka's: a future is answered once
        self._result = result
        self._unset.release()


class LoopFuture(pykka.Future[Any]):
    """A future whose answer goes to an asyncio future, on that future's loop: awaiting it
    never blocks the loop (pykka's own `__await__` calls the blocking `get()`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: asyncio.Future[Any]) -> None:
        super().__init__()
        self._loop, self._target = loop, target

    def set(self, value: Any = None) -> None:
        self._hand_over(_resolve, value)

    def set_exception(self, exc_info: Any = None) -> None:
        self._hand_over(_reject, _error_of(exc_info))

    def answer(self, value: Any) -> None:
        self.set(value)

    def fail(self, error: BaseException) -> None:
        self._hand_over(_reject, error)

    @property
    def settled(self) -> bool:
        """The asyncio future is done: answered, or cancelled by its awaiter (a `wait_for`
        that timed out); nobody reads a later answer."""
        return self._target.done()

    def _hand_over(self, settle: Callable[[asyncio.Future[Any], Any], None], value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self._loop.call_soon_threadsafe(settle, self._target, value)


def _error_of(exc_info: Any) -> BaseException:
    """The exception of pykka's `exc_info` argument (the one being handled when None)."""
    _, error, _ = exc_info if exc_info is not None else sys.exc_info()
    return error if error is not None else RuntimeError("an error without an exception object")


def _resolve(target: asyncio.Future[Any], value: Any) -> None:
    if not target.done():
        target.set_result(value)


def _reject(target: asyncio.Future[Any], error: BaseException) -> None:
    if not target.done():
        target.set_exception(error)


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to an `ask_actor`, delivered to the asker as mail."""

    token: Any
    """What the asker gave to tell its answers apart."""
    value: Any = None
    """The answer, unless `error`."""
    error: BaseException | None = None
    """The error the request raised, if any."""

    def result(self) -> Any:
        """The value, or the error raised."""
        if self.error is not None:
            raise self.error
        return self.value


class MailReply(pykka.Future[Any]):
    """A `Reply` that mails the answer to the asking actor as an `Answer`."""

    def __init__(self, asker: pykka.ActorRef[Any], token: Any) -> None:
        super().__init__()
        self._asker, self._token, self._answered = asker, token, False

    def answer(self, value: Any) -> None:
        self._send(Answer(self._token, value))

    def fail(self, error: BaseException) -> None:
        self._send(Answer(self._token, error=error))

    # pykka's names for the same, so that pykka's own paths (a stop, a proxy) can answer it
    def set(self, value: Any = None) -> None:
        self.answer(value)

    def set_exception(self, exc_info: Any = None) -> None:
        self.fail(_error_of(exc_info))

    def _send(self, answer: Answer) -> None:
        if not self._answered:
            self._answered = True
            tell_if_alive(self._asker, answer)


def weak_reply(reply: Reply) -> Callable[[], Reply | None]:
    """`reply` for as long as its asker may still read the answer; None once it cannot.

    For a request that may wait long (a `Drain`): a caller that gave up must not leave it
    behind. A `ThreadFuture` is held weakly: the asker holds it while it waits in `get()` or
    keeps the future (to `get()` again later); once its `ask(..., timeout=)` raised and
    returned, nothing refers to it and nobody can read an answer. A `LoopFuture` has no
    reader once its asyncio future is done (cancelled by a timeout). Any other reply is held.
    """
    if isinstance(reply, ThreadFuture):
        return weakref.ref(reply)
    if isinstance(reply, LoopFuture):
        return lambda: None if reply.settled else reply
    return lambda: reply


def tell_if_alive(ref: pykka.ActorRef[Any], message: Any) -> None:
    """`tell`, ignoring a target that has stopped: timers and reports may outlive their target
    during a stop, and the database holds the work for the next start.

    A `TurnActor` that is stopping still gets the mail until its stop is over: its `on_stop`
    may be waiting for it (`wait_for_mail`), where pykka's `tell` would already refuse it.
    """
    inbox = ref.actor_inbox
    if isinstance(inbox, _TurnInbox):
        inbox.put(Envelope(message))  # dropped once the actor is gone: a tell has nobody to answer
        return
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)


def forward(target: pykka.ActorRef[Any], message: Any, reply: Reply | None) -> None:
    """Send `message` to `target` with someone else's `reply`: the target answers that asker
    directly (the supervisor hands a user's enqueue to the writer this way)."""
    if not target.is_alive():
        raise pykka.ActorDeadError(f"{target} not found")
    target.actor_inbox.put(Envelope(message, reply_to=cast(pykka.Future[Any] | None, reply)))


def ask_async(ref: pykka.ActorRef[Any], message: Any) -> asyncio.Future[Any]:
    """Ask from asyncio: the returned future completes on the running loop."""
    loop = asyncio.get_running_loop()
    target: asyncio.Future[Any] = loop.create_future()
    if not ref.is_alive():
        raise pykka.ActorDeadError(f"{ref} is not alive")
    ref.actor_inbox.put(Envelope(message, reply_to=LoopFuture(loop, target)))
    return target


# -- the pool of turns -----------------------------------------------------------------------


class TurnPool(DaemonPool):
    """The runtime's threads: daemon threads that run actors' turns, urgent turns first."""

    def __init__(self, name: str = "postroom-actor", max_threads: int = 8, idle_exit: float = 10.0, *,
                 call_later: CallLater | None = None) -> None:
        super().__init__(name, max_threads, idle_exit, call_later=call_later)


# -- actors ------------------------------------------------------------------------------------


def _reply_of(envelope: Envelope[Any]) -> Reply | None:
    """Every future this runtime puts on an envelope answers as a `Reply` does."""
    return cast(Reply | None, envelope.reply_to)


#: pykka's logger: a failure an actor outlives is logged as pykka logs the others.
_PYKKA_LOG = logging.getLogger("pykka")

_PYKKAS_OWN = frozenset({pykka_messages._ActorStop, pykka_messages.ProxyCall,
                         pykka_messages.ProxyGetAttr, pykka_messages.ProxySetAttr})


def _is_pykkas_own(message: Any) -> bool:
    """pykka's stop and proxy messages, which pykka's own handling answers."""
    return type(message) in _PYKKAS_OWN


def _refuse(envelope: Envelope[Any], name: str) -> None:
    """Answer mail an actor will never handle, as pykka's loop does when it stops."""
    if envelope.reply_to is None:
        return
    if isinstance(envelope.message, pykka_messages._ActorStop):
        envelope.reply_to.set(None)  # asked to stop, and stopped it is
        return
    error = pykka.ActorDeadError(f"{name} stopped before handling the message")
    envelope.reply_to.set_exception(exc_info=(type(error), error, None))


class _TurnInbox:
    """pykka's inbox protocol over a deque: asks for a turn when mail arrives and none is due."""

    def __init__(self) -> None:
        self._items: deque[Envelope[Any]] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._scheduled = False
        self._closed = False
        self.owner: TurnActor | None = None  # set by the actor, which it schedules

    def put(self, envelope: Envelope[Any], /) -> None:
        owner = self.owner
        assert owner is not None
        if not _is_pykkas_own(envelope.message) and owner._admit(envelope):
            return
        with self._lock:
            closed = self._closed
            if not closed:
                self._items.append(envelope)
                wake = not self._scheduled
                self._scheduled = True
                self._arrived.notify()
        if closed:
            _refuse(envelope, str(owner))
        elif wake:
            owner._schedule(type(envelope.message) in owner.urgent_mail)

    def get(self) -> Envelope[Any]:  # pykka's protocol; turns use `pop`
        raise NotImplementedError("a TurnActor's inbox is read by its turns")

    def empty(self) -> bool:
        with self._lock:
            return not self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def pop(self) -> Envelope[Any] | None:
        with self._lock:
            return self._items.popleft() if self._items else None

    def wait_pop(self, timeout: float) -> Envelope[Any] | None:
        """The next envelope, waiting at most `timeout` seconds for one (in a turn only)."""
        with self._arrived:
            if not self._items:
                self._arrived.wait(timeout)
            return self._items.popleft() if self._items else None

    def take_plain(self, limit: int) -> list[Envelope[Any]]:
        """Up to `limit` waiting envelopes, stopping before pykka's own messages (a stop)."""
        taken: list[Envelope[Any]] = []
        with self._lock:
            while self._items and len(taken) < limit and not _is_pykkas_own(self._items[0].message):
                taken.append(self._items.popleft())
        return taken

    def end_turn(self) -> bool:
        """True if mail is waiting (another turn is queued), else the actor sleeps."""
        with self._lock:
            self._scheduled = bool(self._items)
            return self._scheduled

    def close(self) -> list[Envelope[Any]]:
        """The actor is gone: what is waiting is returned, and later mail refused."""
        with self._lock:
            self._closed = True
            left = list(self._items)
            self._items.clear()
        return left


class TurnActor(pykka.Actor):
    """A pykka actor whose turns run on a shared `TurnPool` (see the module's docstring)."""

    turn_length: ClassVar[int] = 64
    """Messages handled per turn at most before the actor gives its thread to the next."""
    urgent: ClassVar[bool] = False
    """Turns queued ahead of other actors' (the supervisor and the writer, whom all wait on)."""
    urgent_mail: ClassVar[frozenset[type]] = frozenset()
    """Mail that, arriving while the actor sleeps, queues its turn ahead as `urgent` does."""
    use_daemon_thread = True  # a forgotten supervisor must not keep the host process alive

    actor_inbox: _TurnInbox

    @staticmethod
    def _create_actor_inbox() -> _TurnInbox:
        return _TurnInbox()

    @staticmethod
    def _create_future() -> ThreadFuture:
        return ThreadFuture()

    def __init__(self, pool: TurnPool) -> None:
        super().__init__()
        self.actor_inbox.owner = self
        self._pool = pool
        self._started = False
        self._turn_over = False

    # -- what subclasses write -------------------------------------------------------------

    def receive(self, message: Any, reply: Reply | None) -> None:
        """Handle one message; answer `reply` (None after a `tell`) now or later."""
        raise NotImplementedError

    def admit(self, message: Any, reply: Reply | None) -> bool:
        """In the sender's thread, before `message` is queued: True if it was dealt with here."""
        return False

    def outlive(self, error: Exception) -> bool:
        """A told message's handler raised `error`: True if the actor goes on taking its mail
        (pykka's log of the failure is written all the same), False for pykka's failure (the
        actor stops and `on_failure` runs). An actor outlives a failure to finish by mail what
        it had under way, since waiting for that mail in `on_failure` would hold a thread of the
        pool that the mail may need."""
        return False

    def end_turn(self) -> None:
        """Give the thread to the next actor once the current message is handled."""
        self._turn_over = True

    def ask_actor(self, target: pykka.ActorRef[Any], message: Any, token: Any) -> None:
        """Ask `target` without blocking: its answer comes back as `Answer(token, ...)`.
        Raises ActorDeadError, as `ask` does, if the target has stopped."""
        if not target.is_alive():
            raise pykka.ActorDeadError(f"{target} not found")
        target.actor_inbox.put(Envelope(message, reply_to=MailReply(self.actor_ref, token)))

    def run_job(self, job: Callable[[], None], urgent: bool = False) -> None:
        """Run `job` on the runtime's threads, off this actor's turn (a read of the database);
        `urgent`: ahead of the turns waiting."""
        self._pool.run(job, urgent=urgent)

    def wait_for_mail(self, timeout: float) -> Any | None:
        """The next message, waiting at most `timeout` seconds, in `on_stop` (the supervisor's,
        for the accounts' last reports), holding a thread of the pool meanwhile: never for mail
        that needs that thread, and bounded. Its reply, if any, is refused: nobody is answered
        from here."""
        envelope = self.actor_inbox.wait_pop(timeout)
        if envelope is None:
            return None
        if envelope.reply_to is not None or _is_pykkas_own(envelope.message):
            _refuse(envelope, str(self))
            return self.wait_for_mail(0)
        return envelope.message

    def take_waiting(self, limit: int) -> list[tuple[Any, Reply | None]]:
        """The messages waiting behind the current one, taken now (the writer's group commit)."""
        return [(e.message, _reply_of(e)) for e in self.actor_inbox.take_plain(limit)]

    # -- pykka's extension points and the turn ---------------------------------------------------

    def _start_actor_loop(self) -> None:
        with self.actor_inbox._lock:
            self.actor_inbox._scheduled = True
        self._schedule()  # the first turn runs on_start

    def _schedule(self, urgent: bool = False) -> None:
        try:
            self._pool.run(self._turn, urgent=self.urgent or urgent)
        except RuntimeError:
            self._abandon()  # the pool is shut down (or cannot start a thread): no turn will come

    def _abandon(self) -> None:
        """No turn can run: the actor is gone, and its mail answered as a dead actor's."""
        ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        for envelope in self.actor_inbox.close():
            _refuse(envelope, str(self))

    def _admit(self, envelope: Envelope[Any]) -> bool:
        if self.actor_stopped.is_set():
            return False  # queued, and refused with ActorDeadError as pykka does
        return self.admit(envelope.message, _reply_of(envelope))

    def _turn(self) -> None:
        if not self._started:
            self._started = True
            self._actor_loop_setup()  # on_start
        for _ in range(self.turn_length):
            if self.actor_stopped.is_set():
                break
            envelope = self.actor_inbox.pop()
            if envelope is None:
                break
            self._handle(envelope)
            if self._turn_over:
                self._turn_over = False
                break
        if self.actor_stopped.is_set():
            for envelope in self.actor_inbox.close():
                _refuse(envelope, str(self))
        elif self.actor_inbox.end_turn():
            self._schedule()

    def _handle(self, envelope: Envelope[Any]) -> None:
        """One message, with pykka's semantics (`_actor_loop_running`)."""
        reply = envelope.reply_to
        try:
            if _is_pykkas_own(envelope.message):
                value = self._handle_receive(envelope.message)
                if reply is not None:
                    reply.set(value)
            else:
                self.receive(envelope.message, _reply_of(envelope))
        except Exception as error:  # noqa: BLE001 - to the asker, or a failure of the actor
            if reply is not None:
                reply.set_exception()
            elif not self._outlives(error):
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:  # noqa: BLE001
                    self._handle_failure(*sys.exc_info())
        except BaseException:  # noqa: BLE001
            self._stop()
            # Not block=True: the other actors need this pool's threads to stop.
            ActorRegistry.stop_all(block=False)

    def _outlives(self, error: Exception) -> bool:
        """Whether the actor outlives `error` (`outlive`); if it does, pykka's log of it."""
        try:
            outlived = self.outlive(error)
        except Exception:  # noqa: BLE001 - a failure deciding it is a failure: pykka's, below
            _PYKKA_LOG.exception("%s could not outlive a failure:", self)
            return False
        if outlived:
            _PYKKA_LOG.error("Unhandled exception in %s:", self, exc_info=error)
        return outlived
