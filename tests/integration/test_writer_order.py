"""The writer's group commit on each real database: new rows take ids in the order their enqueues came."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from actors._mailbox import ReplyFuture, Request
from actors.clock import FakeClock
from actors.messages import Persist
from actors.persistence import HealthState, PersistenceActor
from postroom_common import NewBroadcast, NewMessage, Priority
from storage import Storage

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def new(text: str, key: str | None = None) -> NewMessage:
    return NewMessage(phone="+15550001", user_id="u", text=text, attachment=None,
                      priority=Priority.NORMAL, created_at=NOW, scheduled_at=None, max_attempts=5,
                      idempotency_key=key)


def broadcast(text: str, size: int, key: str | None = None) -> NewBroadcast:
    template = new(text, key)
    return NewBroadcast(template, [("+15550001", f"r{i}") for i in range(size)])


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed-broadcast"])
def test_one_commit_writes_enqueues_and_broadcasts_in_the_order_they_came(
        storage: Storage, keyed: bool) -> None:
    """single, broadcast, batch, single, broadcast in one commit: ids rise in that order, so
    the account sends them in that order too (invariant 4)."""
    told: list[Any] = []
    writer = PersistenceActor(storage, FakeClock(NOW), told.append, HealthState())
    commands: list[tuple[Any, bool]] = [
        ([new("single-1")], False),
        (broadcast("broadcast-1", 3, "b1" if keyed else None), True),
        ([new("batch-1"), new("batch-2")], True),
        ([new("single-2")], False),
        (broadcast("broadcast-2", 2), True),
    ]
    futures = [ReplyFuture() for _ in commands]
    # As the supervisor hands them on: the user's request inside, nobody asking the writer.
    writer._commit([Request(Persist(news, Request(None, future), batch), None)
                    for (news, batch), future in zip(commands, futures, strict=True)])
    answers = [future.get(timeout=5) for future in futures]
    ids = [i for answer in answers for i in (answer if isinstance(answer, list) else [answer])]
    assert len(ids) == 9 and ids == sorted(ids), answers
    texts = [storage.get(i).text for i in ids]
    assert texts == ["single-1", *["broadcast-1"] * 3, "batch-1", "batch-2", "single-2",
                     *["broadcast-2"] * 2]
