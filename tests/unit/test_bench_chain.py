"""The benchmark's plain actor chain (`bench/chain.py`): it delivers, in order, and stops cleanly."""

from __future__ import annotations

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


@pytest.mark.parametrize("way", WAYS)
def test_the_chain_delivers_every_message_once_in_order_and_stops(way: str, tmp_path: Path) -> None:
    """Each way delivers every message once, each account's in enqueue order; every actor stops."""
    items = spread(2_000, 20)
    ledger = _Ledger(len(items))
    with open_system("chain", tmp_path, ledger, batch=300, way=way) as queue:
        queue.enqueue_all(items)
        queue.enqueue_one(len(items), items[0][1])
        queue.wait_finished(len(items) + 1, timeout=30)
        ledger.wait(timeout=30)
    assert ledger.count == len(items) + 1
    for account, sent in ledger.sent.items():
        expected = [i for i, p in items if p == account] + ([len(items)] if account == items[0][1] else [])
        assert sent == expected
    assert pykka.ActorRegistry.get_all() == []
    assert not list(tmp_path.iterdir())  # no database, no file
