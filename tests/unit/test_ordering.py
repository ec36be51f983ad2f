"""SendOrder: priority, then enqueue order, in a bounded window."""

from __future__ import annotations

from datetime import UTC, datetime

from actors.ordering import SendOrder
from postroom_common import Message, Priority, Status

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def msg(message_id: int, priority: Priority = Priority.NORMAL) -> Message:
    return Message(id=message_id, phone="+1555", user_id="u", text="t", attachment=None,
                   priority=priority, status=Status.PENDING, created_at=NOW, scheduled_at=None,
                   available_at=NOW, attempts=0, max_attempts=3, last_error=None,
                   completed_at=None, updated_at=NOW)


def _any(_: Message) -> bool:
    return True


def drain(order: SendOrder) -> list[int]:
    out = []
    while (m := order.pop_first(_any)) is not None:
        out.append(m.id)
    return out


def test_priority_then_fifo() -> None:
    """HIGH before NORMAL before LOW, and enqueue (id) order within a priority."""
    order = SendOrder(capacity=100)
    order.replace([])
    for m in [msg(1, Priority.LOW), msg(2), msg(3, Priority.HIGH), msg(4), msg(5, Priority.HIGH),
              msg(6, Priority.LOW)]:
        assert order.offer(m)
    assert drain(order) == [3, 5, 2, 4, 1, 6]


def test_high_overtakes_queued_messages() -> None:
    """A HIGH message offered after NORMAL ones is popped first."""
    order = SendOrder(capacity=100)
    order.replace([msg(1), msg(2)])
    assert order.offer(msg(3, Priority.HIGH))
    assert drain(order) == [3, 1, 2]


def test_duplicate_offer_is_ignored() -> None:
    """The same id offered twice (loaded and delivered) is held once."""
    order = SendOrder(capacity=10)
    order.replace([msg(1)])
    assert not order.offer(msg(1))
    assert drain(order) == [1]


def test_window_evicts_the_last_and_marks_incomplete() -> None:
    """Past capacity the last in send order is dropped; the database still has it."""
    order = SendOrder(capacity=2)
    order.replace([msg(1)])
    order.offer(msg(2))
    assert order.complete
    order.offer(msg(3, Priority.HIGH))
    assert not order.complete
    assert drain(order) == [3, 1]


def test_incomplete_window_refuses_what_sorts_after_it() -> None:
    """With rows left in the database, a message sorting after the window waits to be loaded."""
    order = SendOrder(capacity=2)
    order.replace([msg(1), msg(2)])
    assert not order.complete
    assert not order.offer(msg(9))
    assert order.offer(msg(8, Priority.HIGH))


def test_unloaded_window_refuses_everything() -> None:
    """Before the first load nothing is known, so even a HIGH message waits for the load."""
    order = SendOrder(capacity=5)
    assert not order.offer(msg(1, Priority.HIGH))


def test_discard_and_push_back() -> None:
    """A cancelled message disappears; one pushed back keeps its place."""
    order = SendOrder(capacity=5)
    order.replace([msg(1), msg(2), msg(3)])
    order.discard(2)
    first = order.pop_first(_any)
    assert first is not None
    order.push_back(first)
    assert drain(order) == [1, 3]


def test_invalidate_forgets_the_window() -> None:
    """After invalidate the window is empty and must be reloaded."""
    order = SendOrder(capacity=5)
    order.replace([msg(1)])
    order.invalidate()
    assert len(order) == 0 and not order.complete


def test_reads_start_with_a_small_page_and_double_up_to_the_window() -> None:
    """At a boot with thousands of accounts each needs one row first; a busy one soon reads full pages."""
    order = SendOrder(capacity=20)
    pages = []
    for _ in range(5):
        pages.append(order.page)
        order.replace([msg(n) for n in range(order.page)])  # a full page: more may be waiting
        assert not order.complete
    assert pages == [4, 8, 16, 20, 20]
    order.replace([msg(1)])  # fewer rows than asked for: every due message is in memory
    assert order.complete
