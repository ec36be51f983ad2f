"""The metrics' own arithmetic: histograms kept in plain numbers, and a commit's tally."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from actors.messages import CancelRow, RecordAndClaim, Recorded, SettleInFlight
from actors.metrics import SEND_BUCKETS, Metrics
from postroom_common import AccountPause, Delivery, Message, Priority, Status, Transition

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def lines(registry: CollectorRegistry, name: str) -> list[str]:
    """The exposition lines of one histogram, its `_created` line left out (ours has none)."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines()
            if line.startswith(name) and not line.startswith(f"{name}_created")]


@given(st.lists(st.one_of(st.sampled_from(SEND_BUCKETS),  # on a bound: counted in that bucket
                          st.floats(min_value=0, max_value=100, allow_nan=False)), max_size=50),
       st.integers(min_value=0, max_value=50))
def test_a_histogram_shows_what_prometheus_clients_own_shows(values: list[float], split: int) -> None:
    """Fed the same observations, one by one or a commit's worth at once, it exposes the same
    buckets, count and sum as prometheus_client's `Histogram`."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    metrics = Metrics(ours)
    reference = Histogram("postroom_send_duration_seconds", "d", buckets=SEND_BUCKETS, registry=theirs)
    for value in values[:split]:
        metrics.send_took(value)
    metrics.send_duration.observe_all(values[split:])
    for value in values:
        reference.observe(value)
    ours_lines = lines(ours, "postroom_send_duration_seconds")
    theirs_lines = lines(theirs, "postroom_send_duration_seconds")
    assert [line.split(" ")[0] for line in ours_lines] == [line.split(" ")[0] for line in theirs_lines]
    for mine, reference_line in zip(ours_lines, theirs_lines, strict=True):
        assert float(mine.split(" ")[1]) == pytest.approx(float(reference_line.split(" ")[1]))


def message(message_id: int, status: Status, attempts: int, created_at: datetime) -> Message:
    return Message(message_id, "+15550001", "42", "hi", None, Priority.NORMAL, status, created_at, None,
                   created_at, attempts, 3, None, None, created_at)


def test_a_commit_is_counted_once_per_outcome_with_its_first_claims_timed() -> None:
    """Final records, retries (a given-back attempt is not one), pauses, disablements, cancels
    and settlements are each counted; only first attempts are timed from their enqueue; a stale
    or fenced write counts nothing of what it did not write."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    phone = "+15550001"
    first = message(10, Status.PROCESSING, 1, NOW - timedelta(seconds=2))
    second_try = message(11, Status.PROCESSING, 2, NOW - timedelta(hours=1))
    requests = [
        RecordAndClaim(phone, Transition(1, 1, Status.COMPLETED, NOW), claim=10),
        RecordAndClaim(phone, Transition(2, 1, Status.FAILED, NOW, error="no")),
        RecordAndClaim(phone, Transition(3, 1, Status.RETRYING, NOW, error="later"), claim=11),
        RecordAndClaim(phone, Transition(4, 1, Status.PENDING, NOW, give_back=True),
                       pause=AccountPause(phone, NOW + timedelta(minutes=1), "RateLimited")),
        RecordAndClaim(phone, Transition(5, 1, Status.COMPLETED, NOW)),  # stale: not applied
        RecordAndClaim(phone, None, pause=AccountPause(phone, None, "AccountSuspended")),  # fenced
        RecordAndClaim(phone, None, pause=AccountPause(phone, None, "AccountSuspended")),
        CancelRow(6),
        SettleInFlight(Delivery.AT_LEAST_ONCE, phone),
    ]
    outcomes = [
        Recorded(True, first), Recorded(True, None), Recorded(True, second_try), Recorded(True, None),
        Recorded(False, None), Recorded(True, None, fenced=True), Recorded(True, None),
        message(6, Status.CANCELLED, 0, NOW),
        [message(7, Status.RETRYING, 1, NOW), message(8, Status.FAILED, 3, NOW)],
    ]
    metrics.committed(requests, outcomes, NOW)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("postroom_messages_total", outcome="completed") == 1
    assert value("postroom_messages_total", outcome="failed") == 2
    assert value("postroom_messages_total", outcome="cancelled") == 1
    assert value("postroom_retries_total") == 2  # message 3, and message 7 settled to retry
    assert value("postroom_account_pauses_total", reason="RateLimited") == 1
    assert value("postroom_account_disablements_total") == 1
    assert value("postroom_enqueue_to_send_seconds_count") == 1  # message 10; 11 is a second attempt
    assert value("postroom_enqueue_to_send_seconds_sum") == 2.0
    assert value("postroom_enqueue_to_send_seconds_bucket", le="1.0") == 0
    assert value("postroom_enqueue_to_send_seconds_bucket", le="5.0") == 1
