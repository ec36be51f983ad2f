"""The actor runtime, checked against pykka's own behaviour tests (tests/test_actor.py and
tests/test_ref.py of pykka) and for what it adds: turns on shared threads, replies as mail,
admission in the sender's thread, urgent turns, asyncio answers."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pykka
import pytest
from pykka import ActorDeadError, ActorRegistry

from actors.runtime import Answer, Reply, ThreadFuture, TurnActor, TurnPool, ask_async
from tests.conftest import eventually


class Events:
    def __init__(self) -> None:
        self.on_start = threading.Event()
        self.registered_before_start = threading.Event()
        self.on_stop = threading.Event()
        self.on_failure = threading.Event()
        self.greetings = threading.Event()


class AnActor(TurnActor):
    """pykka's test actor, on the runtime."""

    def __init__(self, pool: TurnPool, events: Events) -> None:
        super().__init__(pool)
        self.events = events

    def on_start(self) -> None:
        self.events.on_start.set()
        if ActorRegistry.get_by_urn(self.actor_urn) is not None:
            self.events.registered_before_start.set()

    def on_stop(self) -> None:
        self.events.on_stop.set()

    def on_failure(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                   tb: TracebackType | None) -> None:
        self.events.on_failure.set()

    def receive(self, message: Any, reply: Reply | None) -> None:
        command = message.get("command") if isinstance(message, dict) else message
        if command == "raise exception":
            raise Exception("foo")
        if command == "raise base exception":
            raise BaseException
        if command == "stop twice":
            self.stop()
            self.stop()
        elif command == "message self then stop":
            self.actor_ref.tell({"command": "greetings"})
            self.stop()
        elif command == "greetings":
            self.events.greetings.set()
        elif command == "callback":
            message["callback"]()
        if reply is not None:
            reply.answer(("echo", message))


@pytest.fixture
def pool() -> Iterator[TurnPool]:
    running = TurnPool("test-runtime", max_threads=2)
    yield running
    ActorRegistry.stop_all(timeout=10)
    running.shutdown()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def ref(pool: TurnPool, events: Events) -> Iterator[pykka.ActorRef[AnActor]]:
    started = AnActor.start(pool, events)
    yield started
    started.stop()


# -- pykka's tests/test_actor.py ---------------------------------------------------------


def test_messages_left_in_queue_after_actor_stops_receive_an_error(ref: pykka.ActorRef[AnActor]) -> None:
    """Mail queued behind a stop is refused with ActorDeadError."""
    event = threading.Event()
    ref.tell({"command": "callback", "callback": event.wait})
    ref.stop(block=False)
    response = ref.ask({"command": "irrelevant"}, block=False)
    event.set()
    with pytest.raises(ActorDeadError):
        response.get(timeout=5)


def test_stop_requests_left_in_queue_after_actor_stops_are_handled(ref: pykka.ActorRef[AnActor]) -> None:
    """A second stop queued behind the first is answered, not refused."""
    event = threading.Event()
    ref.tell({"command": "callback", "callback": event.wait})
    ref.stop(block=False)
    response = ref.stop(block=False)
    event.set()
    response.get(timeout=5)


def test_actor_has_a_unique_uuid4_based_urn(pool: TurnPool, events: Events) -> None:
    """Every actor has its own uuid4 URN, and its string names its class and URN."""
    refs = [AnActor.start(pool, events) for _ in range(3)]
    assert all(uuid.UUID(r.actor_urn).version == 4 for r in refs)
    assert len({r.actor_urn for r in refs}) == 3
    unstarted = AnActor(pool, events)
    assert "AnActor" in str(unstarted) and unstarted.actor_urn in str(unstarted)


def test_on_start_runs_first_after_registration(ref: pykka.ActorRef[AnActor], events: Events) -> None:
    """on_start runs before the first message, and after the actor is registered."""
    assert ref.ask("hello", timeout=5) == ("echo", "hello")
    assert events.on_start.is_set() and events.registered_before_start.is_set()


def test_on_start_can_stop_the_actor(pool: TurnPool, events: Events) -> None:
    """An actor that stops itself in on_start is stopped, and on_stop ran."""

    class EarlyStopping(AnActor):
        def on_start(self) -> None:
            self.stop()

    early = EarlyStopping.start(pool, events)
    assert events.on_stop.wait(5)
    eventually(lambda: not early.is_alive())


def test_on_start_failure_stops_the_actor(pool: TurnPool, events: Events) -> None:
    """An exception in on_start stops the actor."""

    class EarlyFailing(AnActor):
        def on_start(self) -> None:
            raise RuntimeError("on_start fails")

    failing = EarlyFailing.start(pool, events)
    eventually(lambda: not failing.is_alive())


def test_on_stop_is_called_when_stopped(ref: pykka.ActorRef[AnActor], events: Events) -> None:
    """stop() runs on_stop and the actor is no longer alive."""
    assert not events.on_stop.is_set()
    assert ref.stop() is True
    assert events.on_stop.is_set() and not ref.is_alive()
    assert ref.stop() is False  # already dead


def test_on_failure_after_a_tell_and_the_actor_stops(ref: pykka.ActorRef[AnActor], events: Events) -> None:
    """An exception nobody can be told of calls on_failure (not on_stop) and stops the actor."""
    ref.tell({"command": "raise exception"})
    assert events.on_failure.wait(5)
    assert not events.on_stop.is_set()
    eventually(lambda: not ref.is_alive())
    assert ActorRegistry.get_by_urn(ref.actor_urn) is None


def test_an_exception_after_an_ask_goes_to_the_asker(ref: pykka.ActorRef[AnActor], events: Events) -> None:
    """An exception in an asked handler is raised in the asker; the actor goes on."""
    with pytest.raises(Exception, match="foo"):
        ref.ask({"command": "raise exception"}, timeout=5)
    assert ref.ask("still here", timeout=5) == ("echo", "still here")
    assert not events.on_failure.is_set()


def test_on_failure_failing_stops_the_actor(pool: TurnPool, events: Events) -> None:
    """If on_failure itself raises, the actor is stopped all the same."""

    class FailingOnFailure(AnActor):
        def on_failure(self, *exc_info: Any) -> None:
            super().on_failure(*exc_info)
            raise RuntimeError("on_failure fails")

    failing = FailingOnFailure.start(pool, events)
    failing.tell({"command": "raise exception"})
    assert events.on_failure.wait(5)
    eventually(lambda: not failing.is_alive())


class Outliving(AnActor):
    """Outlives its first failure, not a second one."""

    def __init__(self, pool: TurnPool, events: Events) -> None:
        super().__init__(pool, events)
        self.outlived: list[Exception] = []

    def outlive(self, error: Exception) -> bool:
        self.outlived.append(error)
        return len(self.outlived) == 1


def test_an_actor_that_outlives_a_failure_goes_on(pool: TurnPool, events: Events,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """An actor that outlives a failure after a tell keeps its mail and its registration, and
    pykka's log of the failure is written all the same; a failure it does not outlive is
    pykka's (on_failure, stopped)."""
    ref = Outliving.start(pool, events)
    ref.tell({"command": "raise exception"})
    assert ref.ask("still here", timeout=5) == ("echo", "still here")
    assert not events.on_failure.is_set() and ActorRegistry.get_by_urn(ref.actor_urn) is not None
    assert any(r.name == "pykka" and r.levelname == "ERROR" and r.exc_info for r in caplog.records)
    ref.tell({"command": "raise exception"})
    assert events.on_failure.wait(5)
    eventually(lambda: not ref.is_alive())


def test_a_failure_deciding_to_outlive_is_the_actors_failure(pool: TurnPool, events: Events) -> None:
    """If `outlive` itself raises, the actor fails as pykka's actors do."""

    class Broken(AnActor):
        def outlive(self, error: Exception) -> bool:
            raise RuntimeError("outlive fails")

    broken = Broken.start(pool, events)
    broken.tell({"command": "raise exception"})
    assert events.on_failure.wait(5)
    eventually(lambda: not broken.is_alive())


def test_a_base_exception_stops_every_actor(ref: pykka.ActorRef[AnActor], pool: TurnPool) -> None:
    """SystemExit or KeyboardInterrupt in a handler stops every actor, as in pykka."""
    other = AnActor.start(pool, Events())
    ref.tell({"command": "raise base exception"})
    eventually(lambda: not ref.is_alive() and not other.is_alive())


def test_stop_on_self_twice_and_after_its_own_mail(ref: pykka.ActorRef[AnActor], events: Events) -> None:
    """An actor may stop itself twice; mail it sent itself before stopping is handled first."""
    ref.ask({"command": "stop twice"}, timeout=5)
    eventually(lambda: not ref.is_alive())


def test_mail_sent_to_self_before_stop_is_handled(pool: TurnPool, events: Events) -> None:
    """An actor that tells itself then stops handles the told message before it stops."""
    actor = AnActor.start(pool, events)
    actor.ask({"command": "message self then stop"}, timeout=5)
    assert events.greetings.wait(5) and events.on_stop.wait(5)


# -- pykka's tests/test_ref.py ----------------------------------------------------------------


def test_tell_and_ask_on_a_dead_actor_raise(ref: pykka.ActorRef[AnActor]) -> None:
    """tell and ask to a stopped actor raise ActorDeadError; a non-blocking ask fails its future."""
    ref.stop()
    with pytest.raises(ActorDeadError):
        ref.tell("x")
    with pytest.raises(ActorDeadError):
        ref.ask("x")
    with pytest.raises(ActorDeadError):
        ref.ask("x", block=False).get(timeout=5)


def test_ask_can_time_out_or_return_a_future(ref: pykka.ActorRef[AnActor]) -> None:
    """ask(timeout=) raises pykka.Timeout when no answer comes; ask(block=False) is a future."""
    event = threading.Event()
    ref.tell({"command": "callback", "callback": event.wait})
    with pytest.raises(pykka.Timeout):
        ref.ask("late", timeout=0.05)
    future = ref.ask("later", block=False)
    event.set()
    assert future.get(timeout=5) == ("echo", "later")


def test_the_registry_finds_actors_by_class_and_urn(ref: pykka.ActorRef[AnActor]) -> None:
    """Started actors are in pykka's registry; stopped ones are not."""
    assert ActorRegistry.get_by_urn(ref.actor_urn) == ref
    assert ref in ActorRegistry.get_by_class(AnActor)
    ref.stop()
    assert ref not in ActorRegistry.get_by_class(AnActor)


def test_proxies_work(ref: pykka.ActorRef[AnActor], events: Events) -> None:
    """pykka's proxies reach the actor's attributes."""
    assert ref.proxy().events.get(timeout=5) is events


# -- what the runtime adds ----------------------------------------------------------------------


class Asker(TurnActor):
    """Asks another actor by mail and collects what comes back."""

    def __init__(self, pool: TurnPool, target: pykka.ActorRef[Any]) -> None:
        super().__init__(pool)
        self.target = target
        self.answers: list[Answer] = []
        self.done = threading.Event()

    def receive(self, message: Any, reply: Reply | None) -> None:
        if isinstance(message, Answer):
            self.answers.append(message)
            if len(self.answers) == 2:
                self.done.set()
            return
        self.ask_actor(self.target, "question", token=1)
        self.ask_actor(self.target, {"command": "raise exception"}, token=2)


def test_an_ask_between_actors_is_answered_by_mail(pool: TurnPool, ref: pykka.ActorRef[AnActor]) -> None:
    """ask_actor returns at once; the answer and the error come back as Answer mail, in order."""
    asker_ref = Asker.start(pool, ref)
    asker = asker_ref.proxy()
    asker_ref.tell("go")
    assert asker.done.get(timeout=5).wait(5)
    first, second = asker.answers.get(timeout=5)
    assert (first.token, first.result()) == (1, ("echo", "question"))
    assert second.token == 2 and isinstance(second.error, Exception)
    with pytest.raises(Exception, match="foo"):
        second.result()


class Deferred(TurnActor):
    """Answers each ask only when told to flush: a reply may be answered later."""

    def __init__(self, pool: TurnPool) -> None:
        super().__init__(pool)
        self.pending: list[Reply] = []

    def receive(self, message: Any, reply: Reply | None) -> None:
        if message == "flush":
            for waiting in self.pending:
                waiting.answer("now")
                waiting.answer("ignored: answered once")
            self.pending.clear()
        elif reply is not None:
            self.pending.append(reply)


def test_a_reply_may_be_answered_later_and_only_once(pool: TurnPool) -> None:
    """A handler keeps the reply and answers it after another message; a second answer is ignored."""
    deferred = Deferred.start(pool)
    futures = [deferred.ask(n, block=False) for n in range(3)]
    with pytest.raises(pykka.Timeout):
        futures[0].get(timeout=0.05)
    deferred.tell("flush")
    assert [f.get(timeout=5) for f in futures] == ["now", "now", "now"]
    deferred.stop()


class Turns(TurnActor):
    """Records which actor held a thread, and gives it up after each message if told to."""

    log: list[str] = []
    lock = threading.Lock()

    def __init__(self, pool: TurnPool, name: str, short: bool) -> None:
        super().__init__(pool)
        self.name, self.short = name, short

    def receive(self, message: Any, reply: Reply | None) -> None:
        with self.lock:
            self.log.append(self.name)
        if self.short:
            self.end_turn()
        if reply is not None:
            reply.answer(None)


def test_end_turn_lets_other_actors_run_between_messages() -> None:
    """With one thread, two actors that end their turn after each message alternate."""
    single = TurnPool("test-single", max_threads=1)
    gate = threading.Event()
    Turns.log = []
    blocker = AnActor.start(single, Events())
    blocker.tell({"command": "callback", "callback": gate.wait})  # holds the only thread
    a, b = Turns.start(single, "a", True), Turns.start(single, "b", True)
    for _ in range(3):
        a.tell("x")
        b.tell("x")
    gate.set()
    b.ask("last", timeout=5)
    a.ask("last", timeout=5)
    assert Turns.log[:6] == ["a", "b", "a", "b", "a", "b"]
    single.shutdown()


class Urgent(Turns):
    urgent = True


def test_urgent_actors_take_their_turn_first() -> None:
    """A turn of an urgent actor is queued ahead of the turns already waiting."""
    single = TurnPool("test-urgent", max_threads=1)
    gate = threading.Event()
    Turns.log = []
    blocker = AnActor.start(single, Events())
    blocker.tell({"command": "callback", "callback": gate.wait})
    plain = [Turns.start(single, f"plain{n}", True) for n in range(3)]
    for actor in plain:
        actor.tell("x")
    urgent = Urgent.start(single, "urgent", True)
    urgent.tell("x")
    gate.set()
    for actor in plain:
        actor.ask("last", timeout=5)
    assert Turns.log[0] == "urgent"
    single.shutdown()


class UrgentMail(Turns):
    urgent_mail = frozenset({bytes})


def test_urgent_mail_queues_a_sleeping_actors_turn_first() -> None:
    """Mail of a kind in `urgent_mail` wakes its actor ahead of the turns already waiting;
    other mail to the same kind of actor waits its turn."""
    single = TurnPool("test-urgent-mail", max_threads=1)
    gate = threading.Event()
    Turns.log = []
    plain = [Turns.start(single, f"plain{n}", True) for n in range(3)]
    ordinary, woken = UrgentMail.start(single, "ordinary", True), UrgentMail.start(single, "woken", True)
    for actor in [*plain, ordinary, woken]:
        actor.ask("started", timeout=5)  # asleep from here on
    Turns.log = []
    blocker = AnActor.start(single, Events())
    blocker.tell({"command": "callback", "callback": gate.wait})
    for actor in plain:
        actor.tell("x")
    ordinary.tell("x")
    woken.tell(b"x")
    gate.set()
    ordinary.ask("last", timeout=5)
    assert Turns.log[0] == "woken"
    assert Turns.log[1:5] == ["plain0", "plain1", "plain2", "ordinary"]
    single.shutdown()


def test_a_thousand_actors_share_two_threads(pool: TurnPool) -> None:
    """1,000 actors each answer an ask on a pool of two threads."""
    refs = [AnActor.start(pool, Events()) for _ in range(1000)]
    futures = [r.ask(n, block=False) for n, r in enumerate(refs)]
    assert [f.get(timeout=30) for f in futures] == [("echo", n) for n in range(1000)]
    assert pool.threads <= 2


class Admitting(AnActor):
    """Answers even numbers in the sender's thread, queues the rest."""

    def admit(self, message: Any, reply: Reply | None) -> bool:
        if isinstance(message, int) and message % 2 == 0:
            assert reply is not None
            reply.answer(("admitted", threading.get_ident()))
            return True
        return False


def test_admit_deals_with_a_message_in_the_senders_thread(pool: TurnPool, events: Events) -> None:
    """A message the actor admits is answered in the caller's thread; the others are queued."""
    admitting = Admitting.start(pool, events)
    assert admitting.ask(2, timeout=5) == ("admitted", threading.get_ident())
    assert admitting.ask(3, timeout=5) == ("echo", 3)
    admitting.stop()
    with pytest.raises(ActorDeadError):
        admitting.ask(4)


def test_ask_async_answers_on_the_loop(ref: pykka.ActorRef[AnActor]) -> None:
    """ask_async's answer (and error) arrive on the running loop, which keeps running meanwhile."""

    async def main() -> tuple[Any, str]:
        answer = await ask_async(ref, "async")
        try:
            await ask_async(ref, {"command": "raise exception"})
        except Exception as error:  # noqa: BLE001 - the actor's own exception
            return answer, str(error)
        return answer, "no error"

    assert asyncio.run(main()) == (("echo", "async"), "foo")


def test_a_thread_future_is_answered_once_and_wakes_every_waiter() -> None:
    """ThreadFuture: get() waits, every waiter wakes, a second answer is ignored, errors re-raise."""
    future = ThreadFuture()
    got: list[Any] = []
    waiters = [threading.Thread(target=lambda: got.append(future.get(timeout=5))) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    future.answer(42)
    future.answer(43)
    for waiter in waiters:
        waiter.join(5)
    assert got == [42, 42, 42] and future.get() == 42
    failed = ThreadFuture()
    failed.fail(ValueError("bad"))
    with pytest.raises(ValueError, match="bad"):
        failed.get(timeout=1)
    with pytest.raises(pykka.Timeout):
        ThreadFuture().get(timeout=0.01)
