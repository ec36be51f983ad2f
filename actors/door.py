"""The supervisor's inbox, where a single enqueue goes straight on to the writer.

pykka's `tell` and `ask` put a command into the supervisor's inbox from the caller's
thread. A single `Enqueue` needs nothing the supervisor owns: it is checked there, in
the caller's thread, and handed to the persistence actor, which commits it, tells the
supervisor to route the new row (as for every enqueue) and answers the caller. That
spares each message a hop through the supervisor's thread, and with it the wait for
that thread to be scheduled and to take the GIL: between two commits, the round trip
of 16 threads enqueueing one at a time is mostly such waits (bench b, README
"Performance").

Order is kept: an `Enqueue` goes straight on only while no enqueue command waits in the
supervisor's inbox or is in its hands. Otherwise it queues behind them, so that the
commands one thread sends one after another are written in that order (DESIGN.md,
invariant 4: enqueue order within one priority). Everything else, and everything once
the supervisor stops, takes the supervisor's own way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pykka
from pykka._envelope import Envelope

from actors._mailbox import DeferredInbox, log_unanswered
from actors.clock import Clock
from actors.messages import Broadcast, Enqueue, EnqueueBatch, Persist
from actors.validation import Limits, validate_enqueue
from postroom_common import ValidationError

#: Commands that write new rows: their order among themselves is the order of the rows.
ENQUEUE_COMMANDS = (Enqueue, EnqueueBatch, Broadcast)


@dataclass(frozen=True, slots=True)
class Door:
    """What a single enqueue needs on its way past the supervisor."""

    writer: pykka.ActorRef[Any]
    clock: Clock
    limits: Limits


class SupervisorInbox(DeferredInbox):
    """The supervisor's inbox: single enqueues pass through to the writer while order allows."""

    def __init__(self) -> None:
        super().__init__()
        self.door: Door | None = None  # set once the writer runs
        self._enqueues_held = 0  # enqueue commands put here and not yet handed on

    def put(self, envelope: Envelope[Any], /) -> None:
        message = envelope.message
        if not isinstance(message, ENQUEUE_COMMANDS):
            super().put(envelope)
            return
        with self._cond:
            door = self.door
            if (door is None or self._enqueues_held or not isinstance(message, Enqueue)
                    or not self.wrapping or self._owner_stopping()):
                self._enqueues_held += 1
                self._items.append(envelope)
                self._cond.notify()
                return
        _pass_through(door, message, envelope.reply_to)

    def enqueue_handed_on(self) -> None:
        """The supervisor is done with an enqueue command it took from here (written or refused)."""
        with self._cond:
            self._enqueues_held -= 1

    def _owner_stopping(self) -> bool:
        return self.owner_stopped is not None and self.owner_stopped.is_set()


def _pass_through(door: Door, command: Enqueue, reply_to: pykka.Future[Any] | None) -> None:
    """Check `command` here and put it in the writer's inbox, answerable to the caller."""
    try:
        new = validate_enqueue(command, door.clock.now(), door.limits)
    except ValidationError as error:
        _refuse(command, error, reply_to)
        return
    if not door.writer.is_alive():  # stopping: as pykka answers an ask to a dead actor
        _refuse(command, pykka.ActorDeadError(f"{door.writer} not found"), reply_to)
        return
    # No user request inside: the writer answers this envelope's own future.
    door.writer.actor_inbox.put(Envelope(Persist([new], None, batch=False), reply_to=reply_to))


def _refuse(command: Enqueue, error: Exception, reply_to: pykka.Future[Any] | None) -> None:
    if reply_to is None:
        log_unanswered(type(command).__name__, error)
    else:
        reply_to.set_exception(exc_info=(type(error), error, error.__traceback__))
