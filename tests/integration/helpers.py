"""Senders and starters shared by the integration tests."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pykka
import structlog

from actors.account import AccountActor, AccountSettings
from actors.clock import Clock
from postroom_common import Message
from supervisor import GetMessage, Status, Supervisor, SupervisorSettings


class FixedRandom:
    """A random source that always returns the same value (no jitter surprises)."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


class RecordingSender:
    """Records every call; `script(message, call_number)` may raise to simulate failures."""

    def __init__(self, script: Callable[[Message, int], None] | None = None) -> None:
        self.calls: list[Message] = []
        self.script = script
        self._cond = threading.Condition()
        self._calls_of: Counter[int] = Counter()  # calls per message id: a load test makes many

    def __call__(self, message: Message) -> None:
        with self._cond:
            self.calls.append(message)
            self._calls_of[message.id] += 1
            number = self._calls_of[message.id]
            self._cond.notify_all()
        if self.script is not None:
            self.script(message, number)

    def count(self) -> int:
        """Calls so far."""
        with self._cond:
            return len(self.calls)

    def ids(self, phone: str | None = None) -> list[int]:
        with self._cond:
            return [m.id for m in self.calls if phone is None or m.phone == phone]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[int]:
        """Block until at least `count` calls happened."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.calls) >= count, timeout):
                raise AssertionError(f"only {len(self.calls)} of {count} sends within {timeout} s")
            return [m.id for m in self.calls]


def start(url: str, sender: Callable[[Message], Any], clock: Clock | None = None,
          rng: Any = None, **account: Any) -> pykka.ActorRef[Supervisor]:
    """A supervisor with test-friendly settings (no idle stop unless asked)."""
    account.setdefault("idle_timeout", None)
    settings = SupervisorSettings(account=replace(AccountSettings(), **account))
    return Supervisor.start(database=url, sender=sender, settings=settings, clock=clock,
                            rng=rng or FixedRandom())


def start_with(url: str, sender: Callable[[Message], Any], settings: SupervisorSettings,
               clock: Clock | None = None) -> pykka.ActorRef[Supervisor]:
    return Supervisor.start(database=url, sender=sender, settings=settings, clock=clock,
                            rng=FixedRandom())


def status_of(ref: pykka.ActorRef[Supervisor], message_id: int) -> Status:
    return ref.ask(GetMessage(message_id)).status


def account_ref(phone: str) -> pykka.ActorRef[AccountActor]:
    """The running account actor of `phone` (for fault injection)."""
    for ref in pykka.ActorRegistry.get_by_class(AccountActor):
        if ref.proxy().phone.get() == phone:
            return ref
    raise LookupError(phone)


@contextmanager
def cli_globals_restored() -> Iterator[None]:
    """Stop every actor and undo the CLI's global logging configuration on exit."""
    root, pykka_logger = logging.getLogger(), logging.getLogger("pykka")
    saved = (list(root.handlers), root.level, pykka_logger.level)
    try:
        yield
    finally:
        pykka.ActorRegistry.stop_all()
        structlog.reset_defaults()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        pykka_logger.setLevel(saved[2])


def quiet_library_logs() -> None:
    """Keep a test's own supervisor from printing into the output a CLI test reads.

    That supervisor stands for another process: its actors bind their loggers when they
    start, and would write into the captured stdout.
    """
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
