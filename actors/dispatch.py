"""Account actors that take turns on a few shared threads instead of one thread each.

pykka's `ThreadingActor` gives every actor a thread that waits on its inbox. With
10,000 accounts that is 10,000 threads, and at a boot where all of them have work
they fight for the GIL with the single writer they all wait on (bench scenario d).
A `PooledActor` is still a pykka actor (its own ref, inbox, registry entry, one
message at a time, pykka's hooks and stop semantics), but it has no thread: when a
message arrives and it is not already scheduled, it is queued on a shared
`DaemonPool`; a turn handles up to `turn_length` messages, or stops after one the
actor calls long (`ends_turn`: an account's send), and, if more are waiting, queues
the actor again behind the others, so every account gets its turn.

This uses pykka's extension points for implementors of actor types
(`_create_actor_inbox`, `_create_future`, `_start_actor_loop`) and handles each
message as pykka's own loop does; pykka's major version is pinned in pyproject.toml.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar

import pykka
from pykka import ActorRegistry
from pykka._envelope import Envelope

from actors._mailbox import DeferredInbox
from actors.pool import DaemonPool


class TurnInbox(DeferredInbox):
    """An inbox that asks for a turn when a message arrives and no turn is pending.

    Plain pykka envelopes (no `Request` wrapping): a handler's return value answers an ask,
    and `take_nowait` still lets a handler read what arrived while it was busy.
    """

    def __init__(self) -> None:
        super().__init__()
        self.wrapping = False
        self._schedule: Any = None  # set by the actor when it starts
        self._scheduled = False
        self._closed = False

    def start(self, schedule: Any) -> None:
        """Give the first turn (it runs `on_start`), then one whenever mail arrives."""
        with self._cond:
            self._schedule, self._scheduled = schedule, True
        schedule()

    def put(self, envelope: Envelope[Any], /) -> None:
        with self._cond:
            if self._closed:
                dead = True
            else:
                dead = False
                self._items.append(envelope)
                wake = self._schedule is not None and not self._scheduled
                self._scheduled = self._scheduled or wake
        if dead:
            _refuse(envelope)
        elif wake:
            self._schedule()

    def pop(self) -> Envelope[Any] | None:
        with self._cond:
            return self._wrap(self._items.popleft()) if self._items else None

    def end_turn(self) -> bool:
        """True if mail is waiting (the actor queues itself again), else the turn is given up."""
        with self._cond:
            self._scheduled = bool(self._items)
            return self._scheduled

    def close(self) -> list[Envelope[Any]]:
        """The actor is gone: what is waiting is returned, and later mail refused."""
        with self._cond:
            self._closed = True
            left = list(self._items)
            self._items.clear()
        return left


def _refuse(envelope: Envelope[Any]) -> None:
    if envelope.reply_to is None:
        return
    if isinstance(envelope.message, pykka.messages._ActorStop):
        envelope.reply_to.set(None)  # asked to stop, and stopped it is
        return
    error = pykka.ActorDeadError("the actor stopped before handling the message")
    envelope.reply_to.set_exception(exc_info=(type(error), error, None))


class PooledActor(pykka.Actor):
    """A pykka actor whose turns run on a shared `DaemonPool` (see the module's docstring)."""

    turn_length: ClassVar[int] = 64
    """Messages handled per turn at most before the actor yields its thread to the next one."""
    actor_inbox: TurnInbox

    @staticmethod
    def _create_actor_inbox() -> TurnInbox:
        return TurnInbox()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return pykka.ThreadingFuture()

    def __init__(self, dispatcher: DaemonPool) -> None:
        super().__init__()
        self._dispatcher = dispatcher
        self._set_up = False

    def _start_actor_loop(self) -> None:
        self.actor_inbox.start(self._schedule)

    def _schedule(self) -> None:
        self._dispatcher.run(self._turn)

    def _turn(self) -> None:
        if not self._set_up:
            self._set_up = True
            self._actor_loop_setup()  # on_start
        for _ in range(self.turn_length):
            if self.actor_stopped.is_set():
                break
            envelope = self.actor_inbox.pop()
            if envelope is None:
                break
            self._handle(envelope)
            if self.ends_turn(envelope.message):
                break
        if self.actor_stopped.is_set():
            for envelope in self.actor_inbox.close():
                _refuse(envelope)
        elif self.actor_inbox.end_turn():
            self._schedule()

    def ends_turn(self, message: Any) -> bool:
        """True if the actor should yield its thread after handling `message` (a long piece of work)."""
        return False

    def _handle(self, envelope: Envelope[Any]) -> None:
        """One message, as pykka's `_actor_loop_running` handles it."""
        try:
            response = self._handle_receive(envelope.message)
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)
        except Exception:  # noqa: BLE001 - to the caller, or a failure of the actor
            if envelope.reply_to is not None:
                envelope.reply_to.set_exception()
            else:
                self._handle_failure(*sys.exc_info())
                try:
                    self.on_failure(*sys.exc_info())
                except Exception:  # noqa: BLE001
                    self._handle_failure(*sys.exc_info())
        except BaseException:  # noqa: BLE001
            self._stop()
            # Not block=True: the other actors need this pool's threads to stop.
            ActorRegistry.stop_all(block=False)
