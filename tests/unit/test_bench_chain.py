"""The benchmark's plain actor chain (`bench/chain.py`) and the floor (`bench/floor.py`, the chain
writing postroom's rows): they deliver, in order, and stop cleanly."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pykka
import pytest

from bench._common import Deliveries, spread
from bench.systems import WAYS, open_system

pytestmark = pytest.mark.timeout(60)


class _Ledger(Deliveries):
    """`Deliveries` that also keeps each account's indexes in the order they were sent."""

    def __init__(self, expected: int) -> None:
        super().__init__(expected)
        self.sent: dict[str, list[int]] = {}
        self._order = threading.Lock()

    def record(self, index: int, account: str) -> None:
        with self._order:
            self.sent.setdefault(account, []).append(index)
        super().record(index, account)


def _deliver(system: str, way: str, tmp_path: Path) -> list[tuple[int, str]]:
    """Run 2,001 messages through `system` `way`; assert each delivered once, in enqueue
    order per account, and every actor stopped; return what was enqueued."""
    items = spread(2_000, 20)
    ledger = _Ledger(len(items))
    with open_system(system, tmp_path, ledger, batch=300, way=way) as queue:
        queue.enqueue_all(items)
        queue.enqueue_one(len(items), items[0][1])
        queue.wait_finished(len(items) + 1, timeout=30)
        ledger.wait(timeout=30)
    assert ledger.count == len(items) + 1
    for account, sent in ledger.sent.items():
        expected = [i for i, p in items if p == account] + ([len(items)] if account == items[0][1] else [])
        assert sent == expected
    assert pykka.ActorRegistry.get_all() == []
    return [*items, (len(items), items[0][1])]


@pytest.mark.parametrize("way", WAYS)
def test_the_chain_delivers_every_message_once_in_order_and_stops(way: str, tmp_path: Path) -> None:
    """Each way delivers every message once, each account's in enqueue order; every actor stops."""
    _deliver("chain", way, tmp_path)
    assert not list(tmp_path.iterdir())  # no database, no file


@pytest.mark.parametrize("way", WAYS)
def test_the_floor_writes_each_message_s_row_through_to_completed(way: str, tmp_path: Path) -> None:
    """The floor delivers as the chain does, and its file holds postroom's row of each message,
    ended `completed` at its one attempt, the ids in enqueue order per account."""
    enqueued = _deliver("floor", way, tmp_path)
    with sqlite3.connect(tmp_path / "floor.db") as db:
        rows = db.execute("SELECT id, phone, text, status, attempts, claims, completed_at IS NOT NULL"
                          " FROM message_queue ORDER BY id").fetchall()
    assert {(status, attempts, claims, done) for _, _, _, status, attempts, claims, done in rows} == {
        ("completed", 1, 1, 1)}
    by_account: dict[str, list[int]] = {}
    for _, phone, text, *_ in rows:
        by_account.setdefault(phone, []).append(int(text))
    assert sorted(int(text) for _, _, text, *_ in rows) == sorted(index for index, _ in enqueued)
    for account, indexes in by_account.items():
        assert indexes == [index for index, phone in enqueued if phone == account]
