"""A pykka inbox that lets an actor answer an `ask` later, and drain its inbox in batches.

pykka answers an `ask` with the handler's return value, at once. The persistence
actor must answer only after the commit that covers a whole batch, and the
supervisor must hand a caller's reply to the persistence actor instead of
blocking on it. So this inbox hands the handler a `Request` that carries the
caller's future, and hides that future from pykka's loop.

This relies on `Actor._create_actor_inbox`, documented by pykka as internal for
implementors of actor types: pykka's major version is pinned in pyproject.toml.
"""

from __future__ import annotations

import _thread
import contextlib
import queue
import sys
import threading
from collections import deque
from typing import Any

import pykka
from pykka import messages as pykka_messages
from pykka._envelope import Envelope
from pykka._threading import ThreadingFutureResult

from postroom_common import PostroomError, ValidationError
from postroom_common.logs import get_logger

log = get_logger("postroom.commands")


class Request:
    """A message and the means to answer whoever asked (nobody, for a `tell`)."""

    __slots__ = ("_reply_to", "message")

    def __init__(self, message: Any, reply_to: pykka.Future[Any] | None) -> None:
        self.message = message
        self._reply_to = reply_to

    @property
    def expects_reply(self) -> bool:
        return self._reply_to is not None

    def answer(self, value: Any) -> None:
        """Resolve the caller's future (once; later answers are ignored)."""
        reply_to, self._reply_to = self._reply_to, None
        if reply_to is not None:
            reply_to.set(value)

    def fail(self, error: BaseException) -> None:
        """Raise `error` in the caller's `ask`."""
        reply_to, self._reply_to = self._reply_to, None
        if reply_to is not None:
            reply_to.set_exception(exc_info=(type(error), error, error.__traceback__))


class DeferredInbox:
    """pykka's `ActorInbox` protocol over a deque, handing out `Request`s."""

    def __init__(self) -> None:
        self._items: deque[Envelope[Any]] = deque()
        self._cond = threading.Condition()
        self.wrapping = True
        self.owner_stopped: threading.Event | None = None

    def put(self, envelope: Envelope[Any], /) -> None:
        with self._cond:
            self._items.append(envelope)
            self._cond.notify()

    def get(self) -> Envelope[Any]:
        with self._cond:
            while not self._items:
                self._cond.wait()
            return self._wrap(self._items.popleft())

    def empty(self) -> bool:
        with self._cond:
            return not self._items

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def take_nowait(self, limit: int) -> list[Request]:
        """Up to `limit` waiting requests, stopping at pykka's stop message."""
        taken: list[Request] = []
        with self._cond:
            while self._items and len(taken) < limit and _is_plain(self._items[0].message):
                envelope = self._items.popleft()
                taken.append(Request(envelope.message, envelope.reply_to))
        return taken

    def _wrap(self, envelope: Envelope[Any]) -> Envelope[Any]:
        stopped = self.owner_stopped is not None and self.owner_stopped.is_set()
        if stopped or not self.wrapping or not _is_plain(envelope.message):
            return envelope  # stop and proxy messages, and anything after stop: pykka's own path
        return Envelope(Request(envelope.message, envelope.reply_to), reply_to=None)


def _is_plain(message: Any) -> bool:
    return not isinstance(
        message,
        pykka_messages._ActorStop | pykka_messages.ProxyCall | pykka_messages.ProxyGetAttr
        | pykka_messages.ProxySetAttr,
    )


class ReplyFuture(pykka.ThreadingFuture[Any]):
    """pykka's `ThreadingFuture` on one lock, released when the answer is set.

    pykka's waits on a `Condition` over an `RLock`: each ask allocates a waiter lock and
    each answer notifies through it. The persistence actor answers every enqueue between
    two commits, so that work sat on the critical path of every commit; this future does
    the same with one lock.
    One writer sets it, once: the actor that answers the request.
    """

    def __init__(self) -> None:
        pykka.Future.__init__(self)  # not ThreadingFuture's: no Condition
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

    def _settle(self, result: ThreadingFutureResult) -> None:
        if self._result is not None or self._get_hook is not None:
            raise queue.Full  # as pykka's: a future is answered once
        self._result = result
        self._unset.release()


class DeferredReplyActor(pykka.ThreadingActor):
    """A pykka actor whose handlers receive `Request`s and answer when they choose.

    An exception raised by `handle` goes back to an asking caller; after a `tell`
    it is a failure of the actor (pykka's `on_failure`), as with plain pykka.
    """

    actor_inbox: DeferredInbox
    # A forgotten supervisor must not keep the host process alive; the atexit hook in
    # supervisor.py stops running supervisors in order, and the database holds the rest.
    use_daemon_thread = True

    @staticmethod
    def _create_actor_inbox() -> DeferredInbox:
        return DeferredInbox()

    @staticmethod
    def _create_future() -> ReplyFuture:
        return ReplyFuture()

    def __init__(self) -> None:
        super().__init__()
        # However the actor dies (even in on_start, where pykka calls no hook), what is
        # left in the inbox then gets pykka's ActorDeadError instead of hanging forever.
        self.actor_inbox.owner_stopped = self.actor_stopped

    def on_receive(self, message: Any) -> Any:
        request: Request = message
        try:
            self.handle(request)
        except Exception as exc:  # noqa: BLE001 - goes to the caller or to unanswered_error
            if request.expects_reply:
                request.fail(exc)
            else:
                self.unanswered_error(request, exc)

    def unanswered_error(self, request: Request, error: Exception) -> None:
        """An error nobody waits for (the command came by `tell`); by default the actor fails."""
        raise error

    def handle(self, request: Request) -> None:
        """Handle one request; answer it now or later."""
        raise NotImplementedError

    def on_stop(self) -> None:
        # Whatever arrives from now on gets pykka's ActorDeadError, not silence.
        self.actor_inbox.wrapping = False


class MailedReply(ReplyFuture):
    """An ask's future that, once answered, is also mailed to the asking actor as `Answered`.

    An actor that must not block its thread on a reply (an account actor waiting for a
    commit would hold one of the few shared account threads) asks with `ask_by_mail`
    and goes on; the answer comes back through its inbox, in order with its other mail.
    `get()` still works, for an actor that must wait after all (when it stops).
    """

    def __init__(self, owner: pykka.ActorRef[Any]) -> None:
        super().__init__()
        self._owner = owner

    def set(self, value: Any | None = None) -> None:
        super().set(value)
        tell_if_alive(self._owner, Answered(self))

    def set_exception(self, exc_info: Any = None) -> None:
        super().set_exception(exc_info)
        tell_if_alive(self._owner, Answered(self))


class Answered:
    """The mail that says a `MailedReply` has its answer."""

    __slots__ = ("reply",)

    def __init__(self, reply: MailedReply) -> None:
        self.reply = reply


def ask_by_mail(target: pykka.ActorRef[Any], message: Any, owner: pykka.ActorRef[Any]) -> MailedReply:
    """`target.ask(message)` whose answer reaches `owner` as `Answered`; raises ActorDeadError as ask does."""
    if not target.is_alive():
        raise pykka.ActorDeadError(f"{target} not found")
    reply = MailedReply(owner)
    target.actor_inbox.put(Envelope(message, reply_to=reply))
    return reply


def log_unanswered(command: str, error: Exception) -> None:
    """A command (named by its type) that came by `tell` failed: nobody waits for the error,
    so it is logged."""
    event = "command.refused" if isinstance(error, PostroomError) else "command.failed"
    log.error(event, command=command, error=type(error).__name__,
              reason=str(error) if isinstance(error, ValidationError) else None)


def tell_if_alive(ref: pykka.ActorRef[Any], message: Any) -> None:
    """`tell`, ignoring a target that has stopped.

    Timers, crash reports and routing may outlive their target during shutdown; the
    database holds the work, and the next start picks it up.
    """
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)
