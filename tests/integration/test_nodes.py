"""Several nodes on one PostgreSQL database: buckets shared by lease, every message sent once,
handoff without a duplicate, an exclusive owner and nodes kept apart."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.holdings import Holdings
from actors.lease import LeaseKeeper
from postroom_cli.main import main as cli
from postroom_common import AccountPause, Delivery
from postroom_common.buckets import BUCKETS, bucket_of
from storage import Storage, open_database
from supervisor import (
    AccountSettings,
    CancelMessage,
    DatabaseLocked,
    Drain,
    Enqueue,
    GetHealth,
    GetMessage,
    NodeSettings,
    PermanentError,
    Producer,
    RequeueMessage,
    Status,
    Supervisor,
    SupervisorSettings,
    ValidationError,
)
from tests.conftest import eventually
from tests.integration import node_child
from tests.integration.helpers import FixedRandom, RecordingSender, cli_globals_restored

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
SEND_TIME = node_child.SEND_TIME
LEASE = 2.0
ACCOUNTS = [f"+1555{n:07d}" for n in range(40)]


def node_settings(lease: float = LEASE) -> SupervisorSettings:
    return SupervisorSettings(nodes=NodeSettings(lease=lease), feed_poll_interval=0.05,
                              account=AccountSettings(idle_timeout=None))


def start_node(url: str, sender: RecordingSender, lease: float = LEASE) -> pykka.ActorRef[Supervisor]:
    return Supervisor.start(database=url, sender=sender, settings=node_settings(lease), rng=FixedRandom())


@pytest.fixture
def nodes() -> Iterator[list[pykka.ActorRef[Supervisor]]]:
    started: list[pykka.ActorRef[Supervisor]] = []
    yield started
    for ref in started:
        if ref.is_alive():
            ref.stop()


@contextmanager
def opened(url: str) -> Iterator[Storage]:
    """A storage of the test's own on the database, closed after."""
    storage = Storage(open_database(url))
    try:
        yield storage
    finally:
        storage.close_all()


def owners(url: str) -> Counter[int | None]:
    """How many buckets each node holds (None: nobody)."""
    with opened(url) as storage:
        _, by_bucket = storage.bucket_owners()
    return Counter(by_bucket.values())


def enqueue(url: str, per_account: int) -> list[int]:
    with Producer(url) as producer:
        return [producer.enqueue(phone, "7", f"m{n}") for n in range(per_account) for phone in ACCOUNTS]


def test_two_nodes_share_the_buckets_and_send_every_message_once(
        postgres_url: str, nodes: list[pykka.ActorRef[Supervisor]]) -> None:
    """Two nodes: the buckets end split between them, each sends for the accounts of its own,
    every message is sent exactly once, in order per account."""
    first, second = RecordingSender(), RecordingSender()
    nodes.append(start_node(postgres_url, first))
    nodes.append(start_node(postgres_url, second))
    eventually(lambda: len(owners(postgres_url)) == 2 and None not in owners(postgres_url), timeout=30)
    ids = enqueue(postgres_url, 5)
    assert nodes[0].ask(Drain(30)) == 0
    sent = first.ids() + second.ids()
    assert sorted(sent) == sorted(ids)  # each once
    assert first.ids() and second.ids()
    for sender in (first, second):
        for phone in ACCOUNTS:
            mine = sender.ids(phone)
            assert mine == sorted(mine)
    assert not {bucket_of(m.phone) for m in first.calls} & {bucket_of(m.phone) for m in second.calls}
    health = nodes[0].ask(GetHealth())
    assert not health.degraded


def test_any_node_takes_commands_for_any_account_and_its_owner_obeys(
        postgres_url: str, nodes: list[pykka.ActorRef[Supervisor]]) -> None:
    """Enqueued through one node, a message of an account the other node holds is sent by its
    owner (the change feed carries it); a cancel, a pause lifted and a requeue through the
    node that does not hold the account reach the owner too."""
    first, second = RecordingSender(), RecordingSender(lambda message, call: _fail_first(message, call))
    nodes.append(start_node(postgres_url, first))
    nodes.append(start_node(postgres_url, second))
    eventually(lambda: len(owners(postgres_url)) == 2 and None not in owners(postgres_url), timeout=30)
    ids = [nodes[0].ask(Enqueue(phone=phone, user_id="7", text="hi")) for phone in ACCOUNTS]
    assert nodes[0].ask(Drain(30)) == 0
    assert sorted(first.ids() + second.ids()) == sorted(ids) and second.ids()
    theirs = second.calls[0]  # an account node 2 holds
    later = nodes[0].ask(Enqueue(phone=theirs.phone, user_id="7", text="later",
                                 scheduled_at=datetime.now(UTC) + timedelta(seconds=2)))
    assert nodes[0].ask(CancelMessage(later)).status is Status.CANCELLED
    failed = nodes[0].ask(Enqueue(phone=theirs.phone, user_id="7", text="fail me", max_attempts=1))
    eventually(lambda: nodes[0].ask(GetMessage(failed)).status is Status.FAILED)
    assert nodes[0].ask(RequeueMessage(failed)).status is Status.PENDING
    eventually(lambda: nodes[0].ask(GetMessage(failed)).status is Status.COMPLETED)
    time.sleep(2.5)
    assert later not in first.ids() + second.ids()  # cancelled: never sent by its owner
    assert failed not in first.ids()  # the owner, node 2, sent it both times


def _fail_first(message: Any, call: int) -> None:
    if message.text == "fail me" and call == 1:
        raise PermanentError("refused once")


def test_a_node_that_stops_hands_its_buckets_to_the_other_at_once(
        postgres_url: str, nodes: list[pykka.ActorRef[Supervisor]]) -> None:
    """A graceful stop frees the node's buckets as it leaves: the other takes them well before
    a lease could expire, and sends what was left, nothing twice."""
    first, second = RecordingSender(), RecordingSender()
    nodes.append(start_node(postgres_url, first, lease=30.0))
    nodes.append(start_node(postgres_url, second, lease=30.0))
    eventually(lambda: len(owners(postgres_url)) == 2 and None not in owners(postgres_url), timeout=60)
    nodes[1].stop()
    started = time.monotonic()
    eventually(lambda: owners(postgres_url) == Counter({owner_of_all(postgres_url): BUCKETS}), timeout=10)
    assert time.monotonic() - started < 10  # not the 30 s lease
    ids = enqueue(postgres_url, 2)
    assert nodes[0].ask(Drain(30)) == 0
    assert sorted(first.ids()) == sorted(ids) and second.ids() == []


def owner_of_all(url: str) -> int | None:
    with opened(url) as storage:
        live, _ = storage.bucket_owners()
    return live[0] if len(live) == 1 else None


def test_an_exclusive_owner_and_nodes_never_run_together(
        postgres_url: str, nodes: list[pykka.ActorRef[Supervisor]]) -> None:
    """A supervisor without `nodes` (an older postroom's too: the same exclusive lock) is refused
    while a node runs, and a node while it runs."""
    nodes.append(start_node(postgres_url, RecordingSender()))
    with pytest.raises(DatabaseLocked):
        Supervisor.start(database=postgres_url, sender=RecordingSender())
    nodes[0].stop()
    alone = Supervisor.start(database=postgres_url, sender=RecordingSender())
    try:
        with pytest.raises(DatabaseLocked, match="nodes cannot send beside it"):
            start_node(postgres_url, RecordingSender())
    finally:
        alone.stop()


def test_nodes_on_sqlite_are_refused(sqlite_url: str) -> None:
    with pytest.raises(ValidationError, match="PostgreSQL"):
        Supervisor.start(database=sqlite_url, sender=RecordingSender(), settings=node_settings())


def test_a_node_refuses_to_start_when_its_clock_is_off_the_databases(postgres_url: str) -> None:
    from supervisor import ClockSkew

    settings = SupervisorSettings(nodes=NodeSettings(max_clock_skew=1e-9))  # no real clock is that close
    with pytest.raises(ClockSkew, match="max_clock_skew"):
        Supervisor.start(database=postgres_url, sender=RecordingSender(), settings=settings)


# -- nodes in processes of their own: killed, paused, replaced -----------------------------------


@dataclass(frozen=True)
class Send:
    node: str
    message_id: int
    phone: str
    began: float
    ended: float


def sends(log: Path) -> list[Send]:
    found = []
    for line in log.read_text().splitlines():
        node, message_id, _attempt, phone, began, ended = line.split()
        found.append(Send(node, int(message_id), phone, float(began), float(ended)))
    return found


def overlaps(log: Path) -> int:
    """Pairs of sends of one account that ran at the same time, by two nodes."""
    by_account: dict[str, list[Send]] = {}
    for send in sends(log):
        by_account.setdefault(send.phone, []).append(send)
    count = 0
    for mine in by_account.values():
        mine.sort(key=lambda s: s.began)
        for earlier, later in itertools.pairwise(mine):
            if later.began < earlier.ended and later.node != earlier.node:
                count += 1
    return count


class Child:
    """A node in a process of its own (`node_child`)."""

    def __init__(self, url: str, log: Path, name: str, lease: float = LEASE, max_moves: int = 8) -> None:
        command = [sys.executable, "-m", "tests.integration.node_child", url, str(log), name, str(lease),
                   str(max_moves)]
        self.process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "started"

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=30)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.close()


@pytest.mark.slow
def test_a_killed_node_s_buckets_are_taken_once_its_lease_expires_and_every_message_is_sent(
        postgres_url: str, tmp_path: Path, children: list[Child],
        nodes: list[pykka.ActorRef[Supervisor]]) -> None:
    """Node A (a process) sends; node B joins and gets its share; A is SIGKILLed: B takes A's
    buckets once A's lease has expired and sends everything. Only a message A was sending at
    the kill may go twice (at-least-once), and no two sends of one account ever overlap
    but those."""
    log, ids, _ = a_sending_then_b(postgres_url, tmp_path, children, nodes, per_account=50)
    eventually(lambda: len(owners(postgres_url)) == 2, timeout=30)  # B got its share by handoff
    children[0].signal(signal.SIGKILL)
    children[0].wait(10)
    killed = time.time()
    later = enqueue(postgres_url, 1)  # one per account: only B can send them
    assert nodes[0].ask(Drain(60)) == 0
    sent = sends(log)
    assert {s.message_id for s in sent} == set(ids + later)
    twice = [i for i, n in Counter(s.message_id for s in sent).items() if n > 1]
    assert len(twice) <= len(ACCOUNTS), describe(sent, twice)
    assert overlaps(log) <= len(ACCOUNTS)
    last = max(s.began for s in sent if s.message_id in later)
    assert last - killed < 10  # A's accounts wait for its lease (2 s), a renewal and the take
    eventually(lambda: len(node_rows(postgres_url)) == 1, timeout=4 * LEASE)  # A's row forgotten


def node_rows(url: str) -> tuple[Any, ...]:
    with opened(url) as storage:
        return storage.owner_state().nodes


def a_sending_then_b(url: str, tmp_path: Path, children: list[Child], nodes: list[pykka.ActorRef[Supervisor]],
                     per_account: int) -> tuple[Path, list[int], RecordingSender]:
    """Node A, a process, takes every bucket and sends `per_account` messages per account;
    once it has sent 100, node B starts in this process. (The log both write, the ids, B's sender.)"""
    log = tmp_path / "sends.log"
    log.touch()
    children.append(Child(url, log, "A"))
    eventually(lambda: len(owners(url)) == 1 and None not in owners(url), timeout=30)
    ids = enqueue(url, per_account)
    eventually(lambda: len(sends(log)) >= 100, timeout=30)
    b = RecordingSender(lambda message, call: _log_send(log, "B", message))
    nodes.append(start_node(url, b))
    return log, ids, b


def describe(sent: list[Send], twice: list[int]) -> str:
    """The sends of the messages sent twice, by account, for a failure's message."""
    lines = []
    for message_id in sorted(twice):
        mine = sorted((s for s in sent if s.message_id == message_id), key=lambda s: s.began)
        lines.append(f"{message_id} {mine[0].phone}: " + ", ".join(
            f"{s.node} {s.began:.3f}-{s.ended:.3f}" for s in mine))
    return f"{len(twice)} sent twice:\n" + "\n".join(lines)


def _log_send(log: Path, name: str, message: Any) -> None:
    began = time.time()
    time.sleep(SEND_TIME)
    with _LOG_LOCK, log.open("a") as out:
        out.write(f"{name} {message.id} {message.attempts} {message.phone} {began} {time.time()}\n")


_LOG_LOCK = threading.Lock()


@pytest.mark.slow
def test_a_paused_node_claims_nothing_in_the_buckets_taken_from_it(
        postgres_url: str, tmp_path: Path, children: list[Child],
        nodes: list[pykka.ActorRef[Supervisor]]) -> None:
    """Node A is SIGSTOPped past its lease while it sends; B takes A's buckets; A is continued:
    past its claim deadline it claims nothing more, gives up its buckets and joins again. The
    only sends of one account that overlap are those A had begun before it was stopped."""
    log, ids, b = a_sending_then_b(postgres_url, tmp_path, children, nodes, per_account=100)
    children[0].signal(signal.SIGSTOP)
    later = enqueue(postgres_url, 1)  # one per account: only B can send them while A is stopped
    eventually(lambda: set(later) <= set(b.ids()), timeout=30)  # B took A's accounts too
    children[0].signal(signal.SIGCONT)
    assert nodes[0].ask(Drain(60)) == 0
    sent = sends(log)
    assert {s.message_id for s in sent} == set(ids + later)
    twice = [i for i, n in Counter(s.message_id for s in sent).items() if n > 1]
    assert len(twice) <= len(ACCOUNTS), describe(sent, twice)
    assert overlaps(log) <= len(ACCOUNTS), "a fenced node kept claiming"


@pytest.mark.slow
def test_a_rolling_deploy_moves_every_account_without_a_duplicate(
        postgres_url: str, tmp_path: Path, children: list[Child]) -> None:
    """The new node starts beside the old one, which hands it buckets as it goes; the old one is
    stopped with SIGTERM and its last buckets are taken at once: every message sent once, no
    two sends of one account overlap, and the messages queued after the stop are sent without
    waiting for the old node's lease to expire."""
    log = tmp_path / "sends.log"
    log.touch()
    children.append(Child(postgres_url, log, "old", lease=30.0, max_moves=BUCKETS))
    eventually(lambda: len(owners(postgres_url)) == 1 and None not in owners(postgres_url), timeout=30)
    ids = enqueue(postgres_url, 100)
    eventually(lambda: len(sends(log)) >= 100, timeout=30)
    children.append(Child(postgres_url, log, "new", lease=30.0, max_moves=BUCKETS))
    eventually(lambda: len(owners(postgres_url)) == 2, timeout=60)  # handed over by the old one
    children[0].signal(signal.SIGTERM)
    assert children[0].wait(60) == 0
    stopped = time.time()
    ids += enqueue(postgres_url, 1)
    eventually(lambda: len({s.message_id for s in sends(log)}) == len(ids), timeout=60)
    done = max(s.ended for s in sends(log))
    sent = sends(log)
    assert sorted(s.message_id for s in sent) == sorted(ids), "a message was sent twice"
    assert overlaps(log) == 0
    assert {s.node for s in sent if s.began > stopped} == {"new"}
    assert done - stopped < 10  # not the 30 s lease


def test_status_shows_each_node_its_buckets_and_its_lease(
        postgres_url: str, nodes: list[pykka.ActorRef[Supervisor]],
        capsys: pytest.CaptureFixture[str]) -> None:
    """`postroom status` beside two nodes: both listed, their buckets adding up to all of them."""
    nodes.append(start_node(postgres_url, RecordingSender()))
    nodes.append(start_node(postgres_url, RecordingSender()))
    eventually(lambda: len(owners(postgres_url)) == 2 and None not in owners(postgres_url), timeout=30)
    with cli_globals_restored():
        capsys.readouterr()
        assert cli(["status", "--database", postgres_url, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert cli(["status", "--database", postgres_url]) == 0
        text = capsys.readouterr().out
    listed = report["owner"]["nodes"]
    assert len(listed) == 2 and sum(n["buckets"] for n in listed) == BUCKETS
    assert all(0 < n["lease_left_seconds"] <= LEASE for n in listed)
    assert "2 nodes running" in text


def test_a_lease_renewed_too_late_is_given_up_and_the_node_joins_again(postgres_url: str) -> None:
    """The lease keeper on its own: a renewal after the claim deadline (the process stalled)
    gives up every bucket (reported), leaves the old row and joins as a new node; so does a
    renewal that finds its row removed. Neither is fatal: the next tick places again."""
    storage = Storage(open_database(postgres_url))
    storage.create_schema()
    holdings, lost, moved = Holdings(), [], []
    keeper = LeaseKeeper(storage, holdings, NodeSettings(lease=LEASE), "test node",
                         on_moves=lambda take, give: moved.append((take, give)), on_lost=lost.append)
    try:
        first = keeper.join()
        keeper.tick()
        assert moved == [(list(range(BUCKETS)), [])]  # alone: every bucket is placed here
        with storage.write_transaction():
            epochs, _ = storage.take_buckets(first, range(BUCKETS), Delivery.AT_LEAST_ONCE, datetime.now(UTC))
        holdings.won(epochs)
        holdings.renewed(until=0.0)  # as if the process had stalled past its deadline
        keeper.tick()
        assert lost == [set(range(BUCKETS))] and holdings.held() == set()
        second = holdings.node
        assert second is not None and second != first
        live, by_bucket = storage.bucket_owners()
        assert live == [second] and set(by_bucket.values()) == {None}  # the old row's buckets are free
        storage.forget_node(second)  # as another node removes a row long expired
        keeper.tick()
        assert len(lost) == 2 and holdings.node not in (first, second)
    finally:
        storage.close_all()


def test_an_account_disabled_in_another_nodes_bucket_degrades_only_its_owners_health(
        postgres_url: str, nodes: list[pykka.ActorRef[Supervisor]]) -> None:
    """Each node watches the pauses of its own accounts: a suspension in a bucket of node 2
    makes node 2's health degraded, not node 1's."""
    settings = replace(node_settings(), pause_check_interval=0.1)
    nodes.extend(Supervisor.start(database=postgres_url, sender=RecordingSender(), settings=settings,
                                  rng=FixedRandom()) for _ in range(2))
    eventually(lambda: len(owners(postgres_url)) == 2 and None not in owners(postgres_url), timeout=30)
    second = nodes[1].ask(GetHealth()).node
    with opened(postgres_url) as storage:
        by_bucket = storage.bucket_owners()[1]
        phone = next(p for p in ACCOUNTS if by_bucket[bucket_of(p)] == second)
        with storage.write_transaction():
            storage.set_pause(AccountPause(phone, None, "banned"), datetime.now(UTC))
    eventually(lambda: nodes[1].ask(GetHealth()).disabled_accounts)
    time.sleep(0.5)
    assert not nodes[0].ask(GetHealth()).disabled_accounts
