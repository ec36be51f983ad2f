"""Fencing: a node that lost its buckets without noticing (a killed lock connection, a paused
process) claims nothing once another has taken them, because every batch of claims reads the
bucket rows' epochs first, and the database refuses a second message in flight per account."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pykka
import pytest

from actors.clock import FakeClock
from actors.directory import AccountDirectory
from actors.holdings import Holdings
from actors.messages import BatchKind, Fenced, Insert, RecordAndClaim, SettleInFlight
from actors.persistence import HealthState, PersistenceActor
from actors.runtime import ThreadFuture, TurnPool
from postroom_common import Delivery, NewMessage, Priority, Status, StorageError, Transition
from postroom_common.buckets import BUCKETS, bucket_of
from storage import Storage, open_database
from storage.models import POISON
from storage.owner import OWNER_LOCK_KEY
from supervisor import Drain, Message, Supervisor
from tests.conftest import eventually

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _new(phone: str = "+15550001", max_attempts: int = 5) -> NewMessage:
    return NewMessage(phone=phone, user_id="7", text="hi", attachment=None, priority=Priority.NORMAL,
                      scheduled_at=None, max_attempts=max_attempts, created_at=NOW, idempotency_key=None)


def _node(storage: Storage, name: str) -> tuple[int, dict[int, int], list[Message]]:
    """Join as a node and take every bucket, whoever holds it: (node, epochs, rows settled)."""
    node = storage.join(name, lease=None)
    with storage.write_transaction():
        epochs, settled = storage.take_buckets(node, range(BUCKETS), Delivery.AT_LEAST_ONCE, NOW, force=True)
    return node, epochs, settled


@pytest.fixture
def two_storages(database_url: str) -> Iterator[tuple[Storage, Storage]]:
    first, second = Storage(open_database(database_url)), Storage(open_database(database_url))
    first.create_schema()
    yield first, second
    first.close_all()
    second.close_all()


def test_a_takeover_bumps_every_epoch_and_settles_what_the_former_owner_had_in_flight(
        two_storages: tuple[Storage, Storage]) -> None:
    """The second node takes every bucket at the next epoch; the row the first had claimed is
    settled (retried: at-least-once), and the first's late reclaim and settlement, under its
    older epoch, touch nothing the second claims after."""
    first, second = two_storages
    _, first_epochs, _ = _node(first, "first")
    with first.write_transaction():
        (mid,) = first.insert([_new()])
        assert isinstance(mid, int)
        first.claim([mid], NOW, first_epochs)
    _, second_epochs, settled = _node(second, "second")
    assert second_epochs == {bucket: epoch + 1 for bucket, epoch in first_epochs.items()}
    assert [(m.id, m.status) for m in settled] == [(mid, Status.RETRYING)]
    with second.write_transaction():
        assert list(second.claim([mid], NOW, second_epochs)) == [mid]
    phone = _new().phone
    old_epoch = first_epochs[bucket_of(phone)]
    with first.write_transaction():
        assert first.give_back_orphans(phone, NOW, old_epoch) == []
        assert first.recover_interrupted(Delivery.AT_LEAST_ONCE, NOW, phone, old_epoch) == []
    assert first.get(mid).status is Status.PROCESSING and first.get(mid).attempts == 2


@pytest.mark.postgres
def test_a_former_owner_holds_no_bucket_once_another_took_them(postgres_url: str) -> None:
    """`holding` asks the bucket rows: after the takeover the first node holds nothing, the
    second everything; and the first's check, begun before the takeover, makes it wait."""
    first, second = Storage(open_database(postgres_url)), Storage(open_database(postgres_url))
    try:
        first.create_schema()
        first_node, first_epochs, _ = _node(first, "first")
        with first.write_transaction():
            assert first.holding(first_node, first_epochs) == set(range(BUCKETS))
        second_node, second_epochs, _ = _node(second, "second")
        with first.write_transaction():
            assert first.holding(first_node, first_epochs) == set()
        with second.write_transaction():
            assert second.holding(second_node, second_epochs) == set(range(BUCKETS))
        # The first node holds its bucket rows FOR SHARE in an open transaction: a takeover waits.
        taken = threading.Event()
        with second.write_transaction():
            second.holding(second_node, second_epochs)

            def take() -> None:
                _node(first, "first again")
                taken.set()

            thread = threading.Thread(target=take)
            thread.start()
            assert not taken.wait(0.5)
        assert taken.wait(10)
        thread.join()
    finally:
        first.close_all()
        second.close_all()


def test_the_database_refuses_a_second_message_in_flight_for_one_account(
        two_storages: tuple[Storage, Storage]) -> None:
    """The partial unique index: whatever a process believes, one account has one row in flight."""
    storage, _ = two_storages
    with storage.write_transaction():
        ids = storage.insert([_new(), _new(), _new("+15550002")])
        storage.claim([ids[0]], NOW)
    with pytest.raises(StorageError, match=r"(?i)unique"), storage.write_transaction():
        storage.claim([ids[1]], NOW)
    with storage.write_transaction():
        assert set(storage.claim([ids[2]], NOW)) == {ids[2]}  # another account's: free


def _kill_the_lock_session(url: str) -> int:
    """pg_terminate_backend on the session holding the owner's advisory lock; its pid."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
            " AND ((l.classid::int8 << 32) | l.objid::int8) = %s AND l.objsubid = 1"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (OWNER_LOCK_KEY,)).fetchone()
        assert row is not None, "nobody holds the owner lock"
        conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        return int(row[0])


def _sends(log: Path) -> list[tuple[str, int, int, float]]:
    lines = [line.split() for line in log.read_text().splitlines() if line]
    return [(who, int(i), int(attempt), float(at)) for who, i, attempt, at in lines]


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_killed_lock_connection_never_lets_two_owners_claim_one_message(
        postgres_url: str, tmp_path: Path) -> None:
    """The owner's lock session is ended by the server (as an idle-session killer or a DBA
    would) while it sends; a second supervisor then starts: the first sends nothing it had
    not claimed before the takeover, so the only messages sent by both are those it was
    already sending (one per account at most), and the second sends every message."""
    accounts, messages = 20, 3000
    log = tmp_path / "sends.log"
    log.touch()
    command = [sys.executable, "-m", "tests.integration.fence_child", postgres_url, str(log),
               str(accounts), str(messages)]
    first = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "started"
        eventually(lambda: len(_sends(log)) >= 200, timeout=30)
        _kill_the_lock_session(postgres_url)

        lock = threading.Lock()

        def send(message: Message) -> None:
            with lock, log.open("a") as out:
                out.write(f"B {message.id} {message.attempts} {time.time()}\n")

        second = eventually(lambda: _start_or_none(postgres_url, send), timeout=30)
        taken_over = time.time()
        try:
            assert second.ask(Drain(timeout=60)) == 0
        finally:
            second.stop()
        assert first.poll() is None, "the former owner should still be running, fenced"
    finally:
        first.kill()
        first.wait(timeout=30)
        for pipe in (first.stdin, first.stdout):
            if pipe is not None:
                pipe.close()

    sends = _sends(log)
    by_first = {i: at for who, i, _, at in sends if who == "A"}
    by_second = {i for who, i, _, _ in sends if who == "B"}
    assert set(by_first) | by_second == set(range(min(by_second | set(by_first)),
                                                  max(by_second | set(by_first)) + 1))
    late = [i for i, at in by_first.items() if at > taken_over + 0.5]
    assert late == [], f"the former owner began {len(late)} sends after the takeover"
    both = set(by_first) & by_second
    assert len(both) <= accounts, f"{len(both)} messages sent by both owners"


def _start_or_none(url: str, send: object) -> object:
    from supervisor import DatabaseLocked

    try:
        return Supervisor.start(database=url, sender=send)
    except DatabaseLocked:
        return None


# -- the writer fences an account's writes, once per batch ------------------------------------------


def _writer(storage: Storage, holdings: Holdings) -> PersistenceActor:
    return PersistenceActor(TurnPool("test-writer", 2), storage, FakeClock(NOW), HealthState(),
                            AccountDirectory(), pykka.ThreadingActor.start(), holdings=holdings)


def _ask(writer: PersistenceActor, request: Any) -> Any:
    future = ThreadFuture()
    writer._commit([(request, future)])
    return future.get(timeout=10)


def _holding_all(storage: Storage) -> Holdings:
    holdings = Holdings()
    holdings.node, epochs, _ = _node(storage, "writer")
    holdings.won(epochs)
    return holdings


def test_past_its_claim_deadline_a_node_claims_nothing_yet_its_record_lands(
        two_storages: tuple[Storage, Storage]) -> None:
    """The lease's deadline passed (the process stalled): the next claim is refused without
    asking the database (`Recorded.fenced`), while the outcome of the send that did happen is
    recorded, guarded by its attempt."""
    storage, _ = two_storages
    holdings = _holding_all(storage)
    writer = _writer(storage, holdings)
    first, second = _ask(writer, Insert([_new(), _new()], BatchKind.BATCH))
    claimed = _ask(writer, RecordAndClaim(_new().phone, claim=first))
    assert claimed.claimed is not None and not claimed.fenced
    holdings.renewed(until=0.0)  # the deadline is behind us
    done = Transition(first, 1, Status.COMPLETED, NOW)
    answer = _ask(writer, RecordAndClaim(_new().phone, record=done, claim=second))
    assert (answer.applied, answer.claimed, answer.fenced) == (True, None, True)
    assert storage.get(first).status is Status.COMPLETED and storage.get(second).status is Status.PENDING
    assert _ask(writer, SettleInFlight(Delivery.AT_LEAST_ONCE, _new().phone)) == Fenced(_new().phone)


@pytest.mark.postgres
def test_a_node_whose_buckets_were_taken_claims_nothing_more(postgres_url: str) -> None:
    """Another node took every bucket (a lease that expired unnoticed): the writer's next claim
    reads the bucket rows, finds a later epoch, and is fenced; the other node claims."""
    first, second = Storage(open_database(postgres_url)), Storage(open_database(postgres_url))
    try:
        first.create_schema()
        writer = _writer(first, _holding_all(first))
        mid = _ask(writer, Insert([_new()], BatchKind.ONE))
        _, epochs, _ = _node(second, "taker")
        answer = _ask(writer, RecordAndClaim(_new().phone, claim=mid))
        assert answer.fenced and answer.claimed is None
        with second.write_transaction():
            assert list(second.claim([mid], NOW, epochs)) == [mid]
    finally:
        first.close_all()
        second.close_all()


def test_a_message_in_flight_at_three_takeovers_in_a_row_fails_as_poison(
        two_storages: tuple[Storage, Storage]) -> None:
    """A message whose send kills every node that claims it cannot hop from node to node: at
    the third takeover in a row that finds it in flight, it fails (`POISON`), whatever its
    max_attempts; a bystander interrupted once is retried."""
    storage, _ = two_storages
    with storage.write_transaction():
        poison, bystander = storage.insert([_new(max_attempts=100), _new("+15550002")])
    for takeover in range(1, 4):
        _, epochs, _ = _node(storage, f"node {takeover}")
        with storage.write_transaction():
            storage.claim([poison] + ([bystander] if takeover == 3 else []), NOW, epochs)
    _, _, settled = _node(storage, "node 4")
    by_id = {m.id: m for m in settled}
    assert (by_id[poison].status, by_id[poison].last_error) == (Status.FAILED, POISON)
    assert storage.get(poison).attempts == 3
    assert by_id[bystander].status is Status.RETRYING
