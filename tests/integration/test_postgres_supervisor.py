"""The whole supervisor on PostgreSQL: the same guarantees as on SQLite."""

from __future__ import annotations

import threading

import pytest

from supervisor import (
    CancelMessage,
    Enqueue,
    EnqueueBatch,
    GetStats,
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
