"""The history of every attempt: written with its outcome, bounded per message, removed with
the message, shown by `GetMessage` (storage contract on both backends, then end to end)."""

from __future__ import annotations

from datetime import timedelta

from postroom_common import Delivery, Outcome, Status, Transition
from storage import Storage
from storage.models import ATTEMPTS_KEPT
from supervisor import FakeClock, GetMessage, Message, TransientError
from tests.conftest import eventually
from tests.integration.helpers import RecordingSender, start
from tests.integration.test_storage_contract import NOW, insert, new


def _claim(storage: Storage, message_id: int, at: timedelta) -> int:
    with storage.write_transaction():
        return storage.claim([message_id], NOW + at)[message_id].attempts


def _record(storage: Storage, transition: Transition) -> None:
    with storage.write_transaction():
        assert storage.record([transition]) == {transition.id}


def test_each_outcome_is_an_attempt_and_a_called_off_claim_is_none(storage: Storage) -> None:
    """A retry, a rate-limit pause (given back with its error) and a failure are three
    attempts, numbered by claim, with their start, end and error; a claim given back before
    its send began (no error) is none."""
    (mid,) = insert(storage, new(max_attempts=5))
    first = _claim(storage, mid, timedelta(seconds=1))
    _record(storage, Transition(mid, first, Status.RETRYING, NOW + timedelta(seconds=2),
                                "TransientError: 502", NOW + timedelta(seconds=2)))
    second = _claim(storage, mid, timedelta(seconds=3))
    _record(storage, Transition(mid, second, Status.RETRYING, NOW + timedelta(seconds=4),
                                "RateLimited: slow down", NOW + timedelta(seconds=4), give_back=True))
    third = _claim(storage, mid, timedelta(seconds=5))
    _record(storage, Transition(mid, third, Status.RETRYING, NOW + timedelta(seconds=5),
                                available_at=NOW + timedelta(seconds=5), give_back=True))
    fourth = _claim(storage, mid, timedelta(seconds=6))
    _record(storage, Transition(mid, fourth, Status.FAILED, NOW + timedelta(seconds=7),
                                "PermanentError: blocked"))

    history = storage.get(mid).history
    assert [(a.number, a.attempt, a.outcome, a.error) for a in history] == [
        (1, 1, Outcome.RETRYING, "TransientError: 502"),
        (2, 2, Outcome.PAUSED, "RateLimited: slow down"),
        (4, 2, Outcome.FAILED, "PermanentError: blocked"),
    ]
    assert [(a.started_at - NOW, a.ended_at - NOW) for a in history] == [
        (timedelta(seconds=1), timedelta(seconds=2)), (timedelta(seconds=3), timedelta(seconds=4)),
        (timedelta(seconds=6), timedelta(seconds=7))]


def test_a_message_keeps_only_its_last_attempts(storage: Storage) -> None:
    """Past ATTEMPTS_KEPT attempts the oldest make room: the history is bounded and in order."""
    total = ATTEMPTS_KEPT + 5
    (mid,) = insert(storage, new(max_attempts=total + 1))
    for n in range(total):
        attempt = _claim(storage, mid, timedelta(seconds=n))
        _record(storage, Transition(mid, attempt, Status.RETRYING, NOW + timedelta(seconds=n),
                                    "TransientError: again", NOW + timedelta(seconds=n)))
    numbers = [a.number for a in storage.get(mid).history]
    assert numbers == list(range(total - ATTEMPTS_KEPT + 1, total + 1))


def test_an_interrupted_attempt_is_recorded_by_recovery(storage: Storage) -> None:
    """A claim a crash left in flight becomes an `interrupted` attempt when it is settled."""
    (mid,) = insert(storage, new())
    _claim(storage, mid, timedelta(0))
    with storage.write_transaction():
        storage.recover_interrupted(Delivery.AT_LEAST_ONCE, NOW + timedelta(minutes=1))
    (only,) = storage.get(mid).history
    assert (only.number, only.outcome, only.ended_at) == (1, Outcome.INTERRUPTED, NOW + timedelta(minutes=1))


def test_cleanup_removes_a_messages_history_with_it(storage: Storage) -> None:
    """Deleting a finished message deletes its attempts; a message still open keeps its own."""
    done, kept = insert(storage, new("+1"), new("+2"))  # two accounts: each one in flight
    for mid in (done, kept):
        attempt = _claim(storage, mid, timedelta(0))
    _record(storage, Transition(done, attempt, Status.COMPLETED, NOW))
    _record(storage, Transition(kept, attempt, Status.RETRYING, NOW, "TransientError: x", NOW))
    with storage.write_transaction():
        assert storage.delete_finished_before(NOW + timedelta(days=1), limit=10) == 1
    (count,) = storage.db.execute_sql("SELECT COUNT(*) FROM message_attempts").fetchone()
    assert count == 1 and len(storage.history(kept)) == 1 and storage.history(done) == []


def test_get_message_shows_the_three_attempts_of_a_message_that_failed_three_times(sqlite_url: str) -> None:
    """A message whose sender fails every time ends failed after max_attempts=3, and
    GetMessage shows its three attempts: retrying, retrying, failed."""
    clock = FakeClock()

    def always_down(message: Message, call: int) -> None:
        raise TransientError("gateway down")

    sender = RecordingSender(always_down)
    ref = start(sqlite_url, sender, clock=clock)
    from supervisor import Enqueue

    mid = ref.ask(Enqueue(phone="+15550001", user_id="7", text="hi", max_attempts=3))
    for sends, wait in ((1, 1), (2, 2)):
        sender.wait_for(sends)
        eventually(lambda n=sends: ref.ask(GetMessage(mid)).attempts == n
                   and ref.ask(GetMessage(mid)).status is Status.RETRYING)
        clock.advance(wait)
    failed = eventually(lambda: (m := ref.ask(GetMessage(mid))).status is Status.FAILED and m)
    assert [(a.attempt, a.outcome) for a in failed.history] == [
        (1, Outcome.RETRYING), (2, Outcome.RETRYING), (3, Outcome.FAILED)]
    assert {a.error for a in failed.history} == {"TransientError: gateway down"}


def test_a_message_sent_at_its_first_claim_writes_no_history_row_yet_shows_its_attempt(
        storage: Storage) -> None:
    """Most messages are sent at their first claim: that attempt is told by the message's own
    row (claimed_at, completed_at), not written again, so the history costs them no write."""
    (mid,) = insert(storage, new())
    attempt = _claim(storage, mid, timedelta(seconds=1))
    _record(storage, Transition(mid, attempt, Status.COMPLETED, NOW + timedelta(seconds=2)))
    (count,) = storage.db.execute_sql("SELECT COUNT(*) FROM message_attempts").fetchone()
    (only,) = storage.get(mid).history
    assert count == 0
    assert (only.number, only.attempt, only.outcome, only.error) == (1, 1, Outcome.COMPLETED, None)
    assert (only.started_at, only.ended_at) == (NOW + timedelta(seconds=1), NOW + timedelta(seconds=2))
