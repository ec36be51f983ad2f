"""Load: 32 threads enqueue 100,000 messages over 200 accounts while the actors send them.

Nothing acknowledged is lost or sent twice, no caller ever sees an error ("database is
locked" included), and memory stays bounded. Set POSTROOM_LOAD_MESSAGES to change the
total (the default is the specification's 100,000).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from postroom_common import Message
from supervisor import Enqueue, EnqueueBatch, GetHealth, GetStats, Status
from tests.conftest import eventually
from tests.integration.helpers import start

TOTAL = int(os.environ.get("POSTROOM_LOAD_MESSAGES", "100000"))
THREADS = 32
ACCOUNTS = 200
BATCH = 50
SINGLES = 3  # single Enqueues after each batch: ~6% of the messages go through Enqueue
RSS_BOUND_MB = 300


class WarningsOnly:
    """structlog processor: keeps warnings and errors (a few), drops the ~300,000 info events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, _: Any, method: str, event_dict: dict[str, Any]) -> Any:
        if method in ("warning", "error", "critical", "exception"):
            with self._lock:
                self.events.append({**event_dict, "log_level": method})
        raise structlog.DropEvent


@pytest.fixture
def quiet_logs() -> Iterator[WarningsOnly]:
    capture = WarningsOnly()
    structlog.configure(processors=[capture])
    yield capture
    structlog.reset_defaults()


class CountingSender:
    """A no-op sender that counts its calls per message id and wakes whoever waits for a total."""

    def __init__(self) -> None:
        self.calls: Counter[int] = Counter()
        self.target: int | None = None
        self._cond = threading.Condition()

    def __call__(self, message: Message) -> None:
        with self._cond:
            self.calls[message.id] += 1
            if self.target is not None and len(self.calls) >= self.target:
                self._cond.notify_all()  # only then: 100,000 wake-ups would cost the senders

    def wait_for_distinct(self, count: int, timeout: float) -> None:
        with self._cond:
            self.target = count
            if not self._cond.wait_for(lambda: len(self.calls) >= count, timeout):
                raise AssertionError(f"only {len(self.calls)} of {count} messages sent in {timeout} s")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def plan(thread: int) -> list[list[Enqueue]]:
    """This thread's share as a list of calls: one batch of BATCH, then SINGLES single Enqueues, and so on."""
    share = TOTAL // THREADS + (1 if thread < TOTAL % THREADS else 0)
    commands = [Enqueue(phone=f"+1555{(thread * 7919 + i) % ACCOUNTS:07d}", user_id=f"u{i}",
                        text=f"load {thread}-{i}") for i in range(share)]
    calls: list[list[Enqueue]] = []
    while commands:
        calls.append(commands[:BATCH])
        calls += [[c] for c in commands[BATCH:BATCH + SINGLES]]
        commands = commands[BATCH + SINGLES:]
    return calls


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_load_100k_messages_32_threads_200_accounts(sqlite_url: str,
                                                    quiet_logs: WarningsOnly) -> None:
    """100,000 messages from 32 threads: each acked id sent exactly once, no caller error, RSS bounded."""
    gc.collect()
    rss_before = rss_mb()
    sender = CountingSender()
    ref = start(sqlite_url, sender)
    acked: list[list[int]] = [[] for _ in range(THREADS)]
    raised: list[BaseException] = []
    singles = Counter[int]()

    def worker(n: int) -> None:
        try:
            for call in plan(n):
                if len(call) == 1:
                    acked[n].append(int(ref.ask(call[0])))
                    singles[n] += 1
                else:
                    acked[n].extend(ref.ask(EnqueueBatch(call)))
        except BaseException as error:  # noqa: BLE001 - any error at all fails the test
            raised.append(error)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(500)
    enqueued_in = time.monotonic() - started
    assert not raised, [repr(e) for e in raised[:5]]

    ids = [i for mine in acked for i in mine]
    assert len(ids) == TOTAL and len(set(ids)) == TOTAL
    sender.wait_for_distinct(TOTAL, timeout=500)
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == TOTAL, timeout=60)
    drained_in = time.monotonic() - started
    gc.collect()
    grown = rss_mb() - rss_before

    assert set(sender.calls) == set(ids), "a sent id that was never acknowledged, or the reverse"
    assert max(sender.calls.values()) == 1, "some message was sent twice"
    stats = ref.ask(GetStats())
    assert stats.total == TOTAL
    assert len(stats.by_account) == ACCOUNTS
    assert not ref.ask(GetHealth()).degraded
    assert [e["event"] for e in quiet_logs.events] == []
    planned_singles = sum(len(call) == 1 for n in range(THREADS) for call in plan(n))
    assert sum(singles.values()) == planned_singles  # ~5.7% of 100,000 through single Enqueues
    assert planned_singles > 0 or TOTAL <= THREADS * BATCH
    ref.stop()
    print(f"\nload: {TOTAL} messages ({planned_singles} by single Enqueue), enqueued in "
          f"{enqueued_in:.1f} s, all sent in {drained_in:.1f} s, RSS grew {grown:.0f} MB")
    assert grown < RSS_BOUND_MB, f"RSS grew by {grown:.0f} MB"
