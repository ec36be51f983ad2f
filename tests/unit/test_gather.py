"""The writer's gathering before a commit: it waits only while the callers it answered come back."""

from __future__ import annotations

import time

from actors.clock import FakeClock
from actors.directory import AccountDirectory
from actors.persistence import GATHER_SLICE, HealthState, PersistenceActor
from actors.runtime import TurnPool


class ArrivingInbox:
    """An inbox whose length follows a script, one entry per look."""

    def __init__(self, lengths: list[int]) -> None:
        self.lengths = lengths
        self.looks = 0

    def __len__(self) -> int:
        length = self.lengths[min(self.looks, len(self.lengths) - 1)]
        self.looks += 1
        return length


def writer(last_batch: int, inbox: ArrivingInbox, commit_delay: float = 5.0) -> PersistenceActor:
    actor = PersistenceActor(TurnPool("test-gather", 2), None, FakeClock(), HealthState(),  # type: ignore[arg-type]
                             AccountDirectory(), None, commit_delay=commit_delay)  # type: ignore[arg-type]
    actor.actor_inbox = inbox  # type: ignore[assignment]
    actor._last_batch = last_batch
    return actor


def test_all_callers_back_commits_at_once() -> None:
    """Every caller of the last commit is waiting already (15 + the one in hand): no wait at all."""
    inbox = ArrivingInbox([15])
    writer(16, inbox)._gather()
    assert inbox.looks == 1


def test_waits_while_callers_keep_arriving_then_stops_when_all_are_back() -> None:
    """It looks again after each slice while the inbox grows, and stops once 16 are in hand."""
    inbox = ArrivingInbox([0, 4, 9, 15, 15])
    writer(16, inbox)._gather()
    assert inbox.looks == 4  # three slices: 0 -> 4 -> 9 -> 15, all back


def test_a_slice_with_nobody_arriving_ends_the_wait() -> None:
    """The others are busy elsewhere (or gone): one empty slice, and the commit goes ahead."""
    inbox = ArrivingInbox([3, 5, 5, 5, 5])
    start = time.monotonic()
    writer(16, inbox)._gather()
    assert inbox.looks == 3 and time.monotonic() - start < 1.0


def test_never_waits_past_commit_delay() -> None:
    """Callers trickling in one per slice never hold the commit beyond commit_delay."""
    inbox = ArrivingInbox(list(range(1_000_000)))
    start = time.monotonic()
    writer(10_000, inbox, commit_delay=20 * GATHER_SLICE)._gather()
    assert time.monotonic() - start < 1.0 and inbox.looks < 10_000
