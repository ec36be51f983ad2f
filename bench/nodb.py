"""postroom's actor pipeline without a database, to show the database's share of scenario (a).

`MemorySupervisor` is the real `Supervisor` with the real `PersistenceActor`,
`AccountActor`s, reader pool and messages; only the `Storage` behind the
persistence actor is swapped for `MemoryStore`, which keeps rows in dicts and
answers at once (no SQL, no transaction, no fsync). The difference between a
postroom run and a no-database run is therefore what SQLite costs.

This reaches into `Supervisor._open_storage`, a private method: if the core
changes it, the benchmark's quick run (which CI executes) fails and says so.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any, cast

from actors import PersistenceActor
from postroom_common import (
    FINAL_STATUSES,
    OPEN_STATUSES,
    AccountPause,
    AccountView,
    Delivery,
    Message,
    NewMessage,
    QueueStats,
    Status,
    Transition,
)
from storage import OwnerLock, Storage
from storage.feed import FeedCursor
from supervisor import Supervisor

__all__ = ["MemoryStore", "MemorySupervisor"]


class MemoryStore:
    """The part of the storage contract the send pipeline uses, over dicts (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[int, Message] = {}
        self._open: dict[str, dict[int, Message]] = {}
        self._next_id = 1
        self._pauses: dict[str, AccountPause] = {}

    @contextmanager
    def write_transaction(self) -> Iterator[None]:
        yield

    def create_schema(self) -> None:
        pass

    def close(self) -> None:
        pass

    def close_all(self) -> None:
        pass

    def cut_calls_at(self, monotonic: float | None) -> None:
        pass  # no call waits on a database: a stop has nothing to cut

    def insert(self, news: Sequence[NewMessage], *, all_or_nothing: bool = False) -> list[int]:
        with self._lock:
            first, self._next_id = self._next_id, self._next_id + len(news)
            for n, new in enumerate(news):
                self._put(new.as_pending(first + n))
        return list(range(first, first + len(news)))

    def claim(self, ids: Sequence[int], now: datetime,
              epochs: Mapping[int, int] | None = None) -> dict[int, Message]:
        claimed: dict[int, Message] = {}
        with self._lock:
            for message_id in ids:
                m = self._rows.get(message_id)
                if m is not None and m.status in OPEN_STATUSES and m.available_at <= now:
                    claimed[m.id] = replace(m, status=Status.PROCESSING, attempts=m.attempts + 1,
                                            updated_at=now)
                    self._put(claimed[m.id])
        return claimed

    def record(self, transitions: Sequence[Transition]) -> set[int]:
        applied: set[int] = set()
        with self._lock:
            for t in transitions:
                m = self._rows.get(t.id)
                if m is None or m.status is not Status.PROCESSING or m.attempts != t.attempt:
                    continue
                self._put(replace(
                    m, status=t.status, attempts=m.attempts - 1 if t.give_back else m.attempts,
                    last_error=t.error or m.last_error, available_at=t.available_at or m.available_at,
                    completed_at=t.at if t.status in FINAL_STATUSES else None, updated_at=t.at))
                applied.add(t.id)
        return applied

    def set_pause(self, pause: AccountPause, now: datetime) -> None:
        with self._lock:
            self._pauses[pause.phone] = pause

    def clear_pause(self, phone: str) -> bool:
        with self._lock:
            return self._pauses.pop(phone, None) is not None

    def pauses(self, now: datetime) -> list[AccountPause]:
        with self._lock:
            return [p for p in self._pauses.values() if _in_force(p, now)]

    def count_open(self) -> int:
        with self._lock:
            return sum(1 for m in self._rows.values() if m.status not in FINAL_STATUSES)

    def give_back_orphans(self, phone: str, now: datetime, epoch: int | None = None) -> list[int]:
        return []  # claims never get lost in memory

    def recover_interrupted(self, delivery: Delivery, now: datetime, phone: str | None = None,
                            up_to_epoch: int | None = None) -> list[Message]:
        return []  # nothing survives a restart of memory

    def take_buckets(self, node: int, buckets: Sequence[int], delivery: Delivery, now: datetime,
                     *, force: bool = False) -> tuple[dict[int, int], list[Message]]:
        return dict.fromkeys(buckets, 1), []  # one node, no former owner

    def holding(self, node: int, epochs: Mapping[int, int]) -> set[int]:
        return set(epochs)

    def interrupted_again(self) -> list[tuple[int, str]]:
        return []  # no crash is survived, let alone two

    def delete_finished_before(self, cutoff: datetime, limit: int) -> int:
        return 0

    def feed_cursor(self, now_mono: float) -> FeedCursor:
        return FeedCursor(0, [], now_mono)  # no other process writes to memory

    def read_changes(self, cursor: FeedCursor, now_mono: float, limit: int = 1000) -> list[Any]:
        return []

    def listener(self, on_change: Any) -> None:
        return None

    def trim_changes(self, before: datetime) -> int:
        return 0

    def account_view(self, phone: str, now: datetime, limit: int) -> AccountView:
        with self._lock:
            messages = list(self._open.get(phone, {}).values())
            pause = self._pauses.get(phone)
        due = sorted((m for m in messages if m.available_at <= now), key=lambda m: m.order_key)[:limit]
        return AccountView(pause=pause if pause is not None and _in_force(pause, now) else None, due=due,
                           next_due_at=min((m.available_at for m in messages if m.available_at > now),
                                           default=None))

    def open_work(self) -> list[tuple[str, datetime]]:
        with self._lock:
            return [(phone, min(m.available_at for m in messages.values()))
                    for phone, messages in self._open.items() if messages]

    def stats(self) -> QueueStats:
        by_status = dict.fromkeys(Status, 0)
        by_account: dict[str, dict[Status, int]] = {}
        with self._lock:
            for m in self._rows.values():
                by_status[m.status] += 1
                counts = by_account.setdefault(m.phone, {})
                counts[m.status] = counts.get(m.status, 0) + 1
        return QueueStats(by_status=by_status, by_account=by_account)

    def __getattr__(self, name: str) -> Any:
        # Only reached for a method this stand-in lacks: say so, rather than a bare AttributeError.
        raise NotImplementedError(f"bench's MemoryStore has no Storage.{name}: the storage contract "
                                  "changed; add it to bench/nodb.py")

    def _put(self, message: Message) -> None:
        self._rows[message.id] = message
        open_here = self._open.setdefault(message.phone, {})
        if message.status in OPEN_STATUSES:
            open_here[message.id] = message
        else:
            open_here.pop(message.id, None)


def _in_force(pause: AccountPause, now: datetime) -> bool:
    return pause.until is None or pause.until > now


class MemorySupervisor(Supervisor):
    """The real supervisor and actors over a `MemoryStore` (the `database` argument is ignored)."""

    def _open_storage(self, database: Any) -> None:
        self.lock = OwnerLock(cast(Any, None))  # no file, nothing to lock
        self.storage = cast(Storage, MemoryStore())
        self.holdings.node = 1
        self.persistence = PersistenceActor.start(
            self._pool, self.storage, self.clock, self.health, self.directory, self.actor_ref,
            commit_delay=self.settings.commit_delay, holdings=self.holdings)


