"""The supervisor's inbox: which enqueues pass through to the writer, and which must wait in line."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any, cast

import pykka
import pytest
from pykka._envelope import Envelope

from actors.clock import FakeClock
from actors.door import Door, SupervisorInbox
from actors.messages import Broadcast, Enqueue, EnqueueBatch, GetStats, Persist
from actors.validation import Limits
from postroom_common import ValidationError
from tests.conftest import LogCapture

GOOD = Enqueue(phone="+15550001", user_id="u", text="hello")
BAD = Enqueue(phone="+15550001", user_id="", text="hello")


class WriterStandIn:
    """What the door sees of the persistence actor: whether it runs, and its inbox."""

    def __init__(self, alive: bool = True) -> None:
        self.alive = alive
        self.received: list[Envelope[Any]] = []
        self.actor_inbox = self

    def is_alive(self) -> bool:
        return self.alive

    def put(self, envelope: Envelope[Any]) -> None:
        self.received.append(envelope)


def inbox_with(writer: WriterStandIn) -> SupervisorInbox:
    inbox = SupervisorInbox()
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    inbox.door = Door(cast(pykka.ActorRef[Any], writer), clock, Limits())
    inbox.owner_stopped = threading.Event()
    return inbox


def ask(inbox: SupervisorInbox, command: Any) -> pykka.ThreadingFuture[Any]:
    future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
    inbox.put(Envelope(command, reply_to=future))
    return future


def test_a_valid_enqueue_goes_to_the_writer_answerable_to_its_caller() -> None:
    writer = WriterStandIn()
    inbox = inbox_with(writer)
    future = ask(inbox, GOOD)
    assert len(inbox) == 0  # the supervisor never sees it
    (envelope,) = writer.received
    assert envelope.reply_to is future  # the writer's answer reaches the caller
    persist = envelope.message
    assert isinstance(persist, Persist) and persist.request is None and not persist.batch
    (new,) = persist.news
    assert (new.phone, new.user_id, new.text) == (GOOD.phone, GOOD.user_id, GOOD.text)
    assert new.created_at == datetime(2026, 1, 1, tzinfo=UTC)  # the supervisor's clock


def test_an_invalid_enqueue_is_refused_in_the_callers_thread_and_nothing_is_written() -> None:
    writer = WriterStandIn()
    inbox = inbox_with(writer)
    future = ask(inbox, BAD)
    with pytest.raises(ValidationError, match="user_id"):
        future.get(timeout=1)
    assert writer.received == [] and len(inbox) == 0


def test_a_told_invalid_enqueue_is_logged_as_refused(logs: LogCapture) -> None:
    writer = WriterStandIn()
    inbox_with(writer).put(Envelope(BAD))
    (refused,) = logs.events("command.refused")
    assert refused["command"] == "Enqueue" and refused["error"] == "ValidationError"
    assert writer.received == []


@pytest.mark.parametrize("first", [
    EnqueueBatch([GOOD]),
    Broadcast([("+15550001", "u")], text="hi"),
    GOOD,  # a single one that had to wait, too: the next must not overtake it
])
def test_an_enqueue_waits_in_line_behind_enqueue_commands_the_supervisor_holds(first: Any) -> None:
    """Same thread, one command after the other: written in that order (invariant 4)."""
    writer = WriterStandIn()
    inbox = inbox_with(writer)
    inbox.door, door = None, inbox.door  # the first one cannot pass (as before the writer runs)
    ask(inbox, first)
    inbox.door = door
    ask(inbox, GOOD)
    assert writer.received == [] and len(inbox) == 2  # behind it, in the supervisor's inbox
    for _ in range(2):  # the supervisor hands both on, in order
        inbox.get()
        inbox.enqueue_handed_on()
    ask(inbox, GOOD)
    assert len(writer.received) == 1  # nothing held any more: straight through again


def test_an_enqueue_passes_while_the_supervisor_holds_other_commands() -> None:
    """Reads and the like never order writes: they don't hold an enqueue back."""
    writer = WriterStandIn()
    inbox = inbox_with(writer)
    ask(inbox, GetStats())
    ask(inbox, GOOD)
    assert len(writer.received) == 1 and len(inbox) == 1


def test_batches_always_go_through_the_supervisor() -> None:
    writer = WriterStandIn()
    inbox = inbox_with(writer)
    ask(inbox, EnqueueBatch([GOOD]))
    assert writer.received == [] and len(inbox) == 1


def test_once_the_supervisor_stops_every_enqueue_takes_pykkas_way() -> None:
    """A stopped supervisor's inbox keeps them, and pykka answers each with ActorDeadError."""
    writer = WriterStandIn()
    inbox = inbox_with(writer)
    assert inbox.owner_stopped is not None
    inbox.owner_stopped.set()
    ask(inbox, GOOD)
    assert writer.received == [] and len(inbox) == 1


def test_a_stopped_writer_answers_actor_dead() -> None:
    writer = WriterStandIn(alive=False)
    future = ask(inbox_with(writer), GOOD)
    with pytest.raises(pykka.ActorDeadError):
        future.get(timeout=1)
    assert writer.received == []
