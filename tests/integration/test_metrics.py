"""Metrics: what a supervisor given a `Metrics` shows on the host's registry, and nothing else."""

from __future__ import annotations

from typing import Any

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

from actors.privacy import mask_phone
from storage import Storage, open_database
from supervisor import (
    Enqueue,
    GetStats,
    Metrics,
    NodeSettings,
    Status,
    Supervisor,
    SupervisorSettings,
    ValidationError,
)
from tests.conftest import eventually
from tests.integration.helpers import FixedRandom, RecordingSender, account_ref, status_of
from tests.integration.test_storage_contract import NOW, new

pytestmark = pytest.mark.timeout(60)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def names(registry: CollectorRegistry) -> set[str]:
    return {s.name for family in registry.collect() for s in family.samples}


def start(url: str, metrics: Metrics | None, sender: Any = None, **settings: Any) -> Any:
    return Supervisor.start(database=url, sender=sender or RecordingSender(), metrics=metrics,
                            settings=SupervisorSettings(**settings), rng=FixedRandom())


def send_some(ref: Any, phones: list[str], each: int) -> list[int]:
    ids = [int(ref.ask(Enqueue(phone=p, user_id="42", text="hi"))) for p in phones for _ in range(each)]
    eventually(lambda: all(status_of(ref, i) is Status.COMPLETED for i in ids))
    return ids


def test_nothing_is_registered_globally_and_a_stopped_supervisor_shows_no_gauges(sqlite_url: str) -> None:
    """Importing and starting postroom with metrics registers nothing on prometheus_client's
    global registry; once the supervisor stops, its counters stay and its gauges go."""
    registry = CollectorRegistry()
    ref = start(sqlite_url, Metrics(registry, read_every=0.0))
    send_some(ref, ["+15550001"], 3)
    assert sample(registry, "postroom_messages_total", outcome="completed") == 3
    assert sample(registry, "postroom_queue_messages", status="completed") == 3
    assert not any(n.startswith("postroom") for n in names(prometheus_client.REGISTRY))
    ref.stop()
    assert sample(registry, "postroom_messages_total", outcome="completed") == 3
    assert sample(registry, "postroom_queue_messages", status="completed") is None


def test_the_database_is_read_at_most_once_per_read_every(sqlite_url: str) -> None:
    """Scrapes within `read_every` are answered from one reading; with 0 each scrape reads."""
    cached, every = CollectorRegistry(), CollectorRegistry()
    slow, fast = Metrics(cached, read_every=3600.0), Metrics(every, read_every=0.0)
    ref = start(sqlite_url, slow)
    try:
        send_some(ref, ["+15550001"], 1)
        first = sample(cached, "postroom_queue_messages", status="completed")
        send_some(ref, ["+15550001"], 1)
        for _ in range(3):
            assert sample(cached, "postroom_queue_messages", status="completed") == first
        assert slow.reader.reads == 1
    finally:
        ref.stop()
    ref = start(sqlite_url, fast)
    try:
        for _ in range(3):
            assert sample(every, "postroom_queue_messages", status="completed") == 2
        assert fast.reader.reads == 3
    finally:
        ref.stop()


def test_per_account_gauges_only_when_asked_with_masked_phones(sqlite_url: str) -> None:
    """`per_account=True` adds depth per account, labelled with the masked phone; without it
    no series carries an account."""
    plain, detailed = CollectorRegistry(), CollectorRegistry()
    ref = start(sqlite_url, Metrics(plain, read_every=0.0))
    try:
        send_some(ref, ["+15550001", "+15550002"], 2)
        assert not any(n.startswith("postroom_account_queue") for n in names(plain))
    finally:
        ref.stop()
    ref = start(sqlite_url, Metrics(detailed, per_account=True, read_every=0.0))
    try:
        for phone in ("+15550001", "+15550002"):
            assert sample(detailed, "postroom_account_queue_messages", account=mask_phone(phone),
                          status="completed") == 2
        text = prometheus_client.generate_latest(detailed).decode()
        assert "+15550001" not in text
    finally:
        ref.stop()


def test_restarts_and_sends_are_counted(sqlite_url: str) -> None:
    """A crashed account actor's restart is counted; every send is timed."""
    registry = CollectorRegistry()
    sender = RecordingSender()
    ref = start(sqlite_url, Metrics(registry, read_every=0.0), sender=sender)
    try:
        send_some(ref, ["+victim"], 2)
        account_ref("+victim").tell("an unknown message: the actor raises")
        eventually(lambda: sample(registry, "postroom_account_restarts_total") == 1)
        send_some(ref, ["+victim"], 1)
        assert sample(registry, "postroom_send_duration_seconds_count") == len(sender.calls) == 3
        assert sample(registry, "postroom_enqueue_to_send_seconds_count") == 3
        assert sample(registry, "postroom_accounts_parked") == 0
        completed = ref.ask(GetStats()).by_status[Status.COMPLETED]
        assert sample(registry, "postroom_messages_total", outcome="completed") == completed
    finally:
        ref.stop()


def test_bad_metrics_are_refused_before_anything_is_opened(sqlite_url: str) -> None:
    """A registry that is not a CollectorRegistry, or metrics that are not `Metrics`: a
    ValidationError."""
    with pytest.raises(ValidationError, match="CollectorRegistry"):
        Metrics("registry")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="Metrics"):
        start(sqlite_url, object())  # type: ignore[arg-type]


@pytest.mark.postgres
def test_a_node_shows_its_buckets_and_its_lease_renew_lag(postgres_url: str) -> None:
    """A node of several shows the buckets it holds and how long since its lease's renewal."""
    registry = CollectorRegistry()
    ref = start(postgres_url, Metrics(registry, read_every=0.0), nodes=NodeSettings(lease=2.0))
    try:
        eventually(lambda: (sample(registry, "postroom_node_buckets_held") or 0) > 0)
        lag = sample(registry, "postroom_node_lease_renew_lag_seconds")
        assert lag is not None and 0.0 <= lag < 2.0
    finally:
        ref.stop()


def test_an_attempt_lost_in_a_crash_is_counted_a_retry_when_the_boot_settles_it(sqlite_url: str) -> None:
    """A message left in flight by a process that died is settled `retrying` at the next boot:
    one retry counted, then its send completes."""
    storage = Storage(open_database(sqlite_url))
    storage.create_schema()
    with storage.write_transaction():
        (mid,) = storage.insert([new()])
        storage.claim([mid], NOW)  # in flight, and its process gone
    storage.close()
    registry = CollectorRegistry()
    ref = start(sqlite_url, Metrics(registry, read_every=0.0))
    try:
        eventually(lambda: status_of(ref, mid) is Status.COMPLETED)
        assert sample(registry, "postroom_retries_total") == 1
        assert sample(registry, "postroom_messages_total", outcome="completed") == 1
    finally:
        ref.stop()
