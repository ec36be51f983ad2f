"""The whole supervisor on PostgreSQL: the same guarantees as on SQLite."""

from __future__ import annotations

import threading

import pytest

from supervisor import (
    Broadcast,
    CancelMessage,
    Enqueue,
    EnqueueBatch,
    GetMessage,
    GetStats,
    IdempotencyConflict,
    Priority,
    Status,
)
from tests.conftest import eventually
from tests.integration.helpers import RecordingSender, start, status_of

pytestmark = pytest.mark.postgres


def test_supervisor_on_postgres_delivers_in_order_and_restarts(postgres_url: str) -> None:
    """Enqueue from threads, order per account, cancel, stop and restart on PostgreSQL."""
    gate = threading.Event()
    sender = RecordingSender(lambda m, n: gate.wait(10) if m.text == "first" else None)
    ref = start(postgres_url, sender)
    first = ref.ask(Enqueue(phone="+pg", user_id="u", text="first"))
    sender.wait_for(1)
    plan = [Priority.LOW, Priority.HIGH, Priority.NORMAL, Priority.HIGH]
    ids = [ref.ask(Enqueue(phone="+pg", user_id="u", text="x", priority=p)) for p in plan]
    gate.set()
    sender.wait_for(5)
    expected = [first] + [i for _, i in sorted(zip(plan, ids, strict=True))]
    assert sender.ids("+pg") == expected
    batch = ref.ask(EnqueueBatch([Enqueue(phone=f"+pg{i % 5}", user_id="u", text=str(i))
                                  for i in range(200)]))
    assert batch == sorted(batch)
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == 205)
    ref.stop()

    sender2 = RecordingSender()
    again = start(postgres_url, sender2)
    later = again.ask(Enqueue(phone="+pg", user_id="u", text="y"))
    assert later > max(batch)  # the id sequence survives the restart
    eventually(lambda: status_of(again, later) is Status.COMPLETED)
    with pytest.raises(Exception, match="completed"):
        again.ask(CancelMessage(later))
    again.stop()


def test_broadcast_on_postgres_with_a_key_is_sent_once(postgres_url: str) -> None:
    """A keyed broadcast over more keys than one lookup holds: sent again it writes nothing;
    each account sends its share in order."""
    sender = RecordingSender()
    ref = start(postgres_url, sender)
    recipients = [(f"+pg{i % 4}", f"user-{i}") for i in range(1_200)]
    ids = ref.ask(Broadcast(recipients, text="news", idempotency_key="b1"))
    assert ids == sorted(ids) and ref.ask(Broadcast(recipients, text="news", idempotency_key="b1")) == ids
    with pytest.raises(IdempotencyConflict, match=r"^recipient 0: "):
        ref.ask(Broadcast(recipients[:1], text="other", idempotency_key="b1"))
    sender.wait_for(1_200, timeout=60)
    for phone in {p for p, _ in recipients}:
        assert sender.ids(phone) == [i for i, (p, _) in zip(ids, recipients, strict=True) if p == phone]
    assert ref.ask(GetMessage(ids[-1])).idempotency_key == "b1:1199"
    assert ref.ask(GetStats()).total == 1_200
    ref.stop()
