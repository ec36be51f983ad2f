"""The writer's group commit on each real database: new rows take ids in the order their enqueues came."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pykka
import pytest

from actors.clock import FakeClock
from actors.directory import AccountDirectory
from actors.messages import BatchKind, Insert
from actors.persistence import HealthState, PersistenceActor
from actors.runtime import ThreadFuture, TurnPool
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
    supervisor = pykka.ThreadingActor.start()  # receives the rows of accounts not running
    writer = PersistenceActor(TurnPool("test-writer", 2), storage, FakeClock(NOW), HealthState(),
                              AccountDirectory(), supervisor)
    commands: list[tuple[Any, BatchKind]] = [
        ([new("single-1")], BatchKind.ONE),
        (broadcast("broadcast-1", 3, "b1" if keyed else None), BatchKind.BROADCAST),
        ([new("batch-1"), new("batch-2")], BatchKind.BATCH),
        ([new("single-2")], BatchKind.ONE),
        (broadcast("broadcast-2", 2), BatchKind.BROADCAST),
    ]
    futures = [ThreadFuture() for _ in commands]
    writer._commit([(Insert(news, kind), future)
                    for (news, kind), future in zip(commands, futures, strict=True)])
    answers = [future.get(timeout=5) for future in futures]
    ids = [i for answer in answers for i in (answer if isinstance(answer, list) else [answer])]
    assert len(ids) == 9 and ids == sorted(ids), answers
    texts = [storage.get(i).text for i in ids]
    assert texts == ["single-1", *["broadcast-1"] * 3, "batch-1", "batch-2", "single-2",
                     *["broadcast-2"] * 2]
