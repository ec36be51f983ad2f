"""Changes to many messages beside a running owner: a chunk per write transaction.

Each chunk selects its rows, changes them and announces them in the change feed in one
transaction, so the owner learns of each chunk at its commit and no transaction holds the
database (the SQLite file's write lock, PostgreSQL's row locks) for long.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from postroom_cli._args import utcnow
from postroom_common import Change, InvalidTransition, Message
from storage import Storage

__all__ = ["CHUNK", "Bulk", "Select", "change_all", "count_all"]

#: Messages changed per write transaction.
CHUNK = 500

#: The ids of a selection after an id, at most a number of them, in id order.
Select = Callable[[int, int], list[int]]


@dataclass
class Bulk:
    """What a bulk change did."""

    changed: int = 0
    """Messages changed."""
    refused: list[int] = field(default_factory=list)
    """Selected messages the change did not apply to (`InvalidTransition`): their status was
    not, or no longer, one it changes."""


def change_all(storage: Storage, select: Select, change: Callable[[int, datetime], Message],
               announce: Callable[[Sequence[Message]], list[Change]]) -> Bulk:
    """Apply `change` to every selected message, a chunk of `CHUNK` per write transaction,
    announcing what each chunk changed (`announce`) in that transaction."""
    bulk, after = Bulk(), 0
    while True:
        with storage.write_transaction():
            ids = select(after, CHUNK)
            now = utcnow()
            changed = _each(ids, now, change, bulk.refused)
            storage.announce(announce(changed), now)
        bulk.changed += len(changed)
        if len(ids) < CHUNK:
            return bulk
        after = ids[-1]


def _each(ids: list[int], now: datetime, change: Callable[[int, datetime], Message],
          refused: list[int]) -> list[Message]:
    changed = []
    for message_id in ids:
        try:
            changed.append(change(message_id, now))
        except InvalidTransition:  # a Python refusal: the transaction goes on
            refused.append(message_id)
    return changed


def count_all(select: Select) -> int:
    """How many messages the selection holds now (a dry run: nothing written)."""
    total, after = 0, 0
    while ids := select(after, CHUNK):
        total += len(ids)
        after = ids[-1]
    return total
