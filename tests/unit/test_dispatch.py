"""PooledActor: pykka actors that take turns on a shared, capped pool of threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.dispatch import PooledActor
from actors.pool import DaemonPool
from tests.conftest import eventually


class Recorder(PooledActor):
    """Appends (name, message) to a shared journal; "long" messages end a turn."""

    def __init__(self, pool: DaemonPool, name: str, journal: list[tuple[str, Any]],
                 gate: threading.Event | None = None, stopped: threading.Event | None = None) -> None:
        super().__init__(pool)
        self.name, self.journal, self.gate = name, journal, gate
        self.started_before_mail = False
        self.stopped = stopped or threading.Event()

    def on_start(self) -> None:
        if self.gate is not None:
            self.gate.wait(5)  # hold the pool's thread until the test has queued its mail
        self.started_before_mail = not self.journal
        self.journal.append((self.name, "started"))

    def on_stop(self) -> None:
        self.stopped.set()

    def ends_turn(self, message: Any) -> bool:
        return message == "long"

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        self.journal.append((self.name, message))
        return (self.name, message)


@pytest.fixture
def pool() -> Iterator[DaemonPool]:
    one = DaemonPool("test-turns", max_threads=1)
    yield one
    pykka.ActorRegistry.stop_all(timeout=10)  # the actors need the pool to stop
    one.shutdown()


def test_many_actors_share_few_threads_and_keep_their_own_order() -> None:
    pool = DaemonPool("test-turns", max_threads=2)
    journal: list[tuple[str, Any]] = []
    refs = [Recorder.start(pool, f"a{n}", journal) for n in range(200)]
    try:
        for n in range(5):
            for ref in refs:
                ref.tell(n)
        answers = pykka.get_all([ref.ask("last", block=False) for ref in refs], timeout=10)
        assert answers == [(f"a{n}", "last") for n in range(200)]
        for n in range(200):
            mine = [m for who, m in journal if who == f"a{n}"]
            assert mine == ["started", 0, 1, 2, 3, 4, "last"]
        assert pool.threads <= 2
        assert sum(t.name == "test-turns" for t in threading.enumerate()) <= 2
    finally:
        pykka.ActorRegistry.stop_all(timeout=10)
        pool.shutdown()


def test_a_long_message_ends_the_turn_so_others_go_first(pool: DaemonPool) -> None:
    """With one thread, A's queued long messages alternate with B's: no actor hogs the thread."""
    journal: list[tuple[str, Any]] = []
    gate = threading.Event()
    a = Recorder.start(pool, "A", journal, gate)  # its first turn holds the only thread
    b = Recorder.start(pool, "B", journal)
    for _ in range(3):
        a.tell("long")
        b.tell("long")
    gate.set()
    eventually(lambda: len(journal) == 8)
    assert journal == [("A", "started"), ("A", "long"), ("B", "started"), ("B", "long"),
                       ("A", "long"), ("B", "long"), ("A", "long"), ("B", "long")]


def test_a_turn_is_bounded_even_for_cheap_messages(pool: DaemonPool) -> None:
    journal: list[tuple[str, Any]] = []
    gate = threading.Event()
    a = Recorder.start(pool, "A", journal, gate)
    b = Recorder.start(pool, "B", journal)
    for n in range(Recorder.turn_length * 2):
        a.tell(n)
    b.tell("hello")
    gate.set()
    eventually(lambda: ("B", "hello") in journal and len(journal) == Recorder.turn_length * 2 + 3)
    # B's mail waited for one turn of A at most, not for all of A's messages.
    assert journal.index(("B", "hello")) <= Recorder.turn_length + 2


def test_on_start_runs_first_then_mail_that_came_before_it(pool: DaemonPool) -> None:
    journal: list[tuple[str, Any]] = []
    gate = threading.Event()
    ref = Recorder.start(pool, "A", journal, gate)
    ref.tell("early")
    gate.set()
    assert ref.ask("late", timeout=5) == ("A", "late")
    assert journal == [("A", "started"), ("A", "early"), ("A", "late")]
    assert ref.proxy().started_before_mail.get(timeout=5)


def test_an_error_goes_to_the_asker_and_kills_the_actor_after_a_tell(pool: DaemonPool) -> None:
    journal: list[tuple[str, Any]] = []
    ref = Recorder.start(pool, "A", journal)
    with pytest.raises(ValueError, match="boom"):
        ref.ask("boom", timeout=5)
    assert ref.is_alive() and ref.ask("still here", timeout=5) == ("A", "still here")
    ref.tell("boom")
    eventually(lambda: not ref.is_alive())
    other = Recorder.start(pool, "B", journal)  # the pool's thread survived it
    assert other.ask("hi", timeout=5) == ("B", "hi")


def test_stop_runs_on_stop_and_refuses_what_comes_after(pool: DaemonPool) -> None:
    journal: list[tuple[str, Any]] = []
    gate = threading.Event()
    stopped = threading.Event()
    ref = Recorder.start(pool, "A", journal, gate, stopped)
    stopping = ref.stop(block=False)
    behind: pykka.Future[Any] = ref.ask("too late", block=False)  # queued behind the stop
    gate.set()
    stopping.get(timeout=5)
    assert stopped.is_set()
    with pytest.raises(pykka.ActorDeadError):
        behind.get(timeout=5)
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("later")
    assert ("A", "too late") not in journal
