"""The supervisor's reading of the change feed: what other processes wrote, to be obeyed.

A producer's insert or requeue names an id range, a cancel its id, a pause its account
(`storage.Storage.announce`). Each read takes the feed's new entries (`FeedCursor` keeps the
place), then reads the open rows of the ranges they name, at most `ROWS_PER_READ` a read: a
range of a huge broadcast is read over several, the rest kept here, so that no read holds
the supervisor's memory or a runtime thread for long. Runs on the runtime's threads, one read
at a time; the supervisor carries out the `FeedRead`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from actors.messages import FeedRead
from postroom_common import ChangeKind, Message
from storage import Storage
from storage.feed import FeedCursor

__all__ = ["CHANGES_PER_READ", "ROWS_PER_READ", "FeedState"]

#: Entries of the feed taken per read.
CHANGES_PER_READ = 1000
#: Open rows read per read of the feed (the rest of a range waits for the next read).
ROWS_PER_READ = 5000


@dataclass
class FeedState:
    """Where the supervisor is in the feed, and the rows of ranges still to read."""

    cursor: FeedCursor
    reading: bool = False
    """A read is under way (on a runtime thread)."""
    again: bool = False
    """A wake-up came during the read: read again after it."""
    ranges: deque[tuple[int, int]] = field(default_factory=deque)
    """Id ranges named by the feed whose open rows are not read yet."""

    def read(self, storage: Storage, now_mono: float) -> FeedRead:
        """Read the feed's new entries and up to `ROWS_PER_READ` rows they name."""
        changes = storage.read_changes(self.cursor, now_mono, CHANGES_PER_READ)
        for change in changes:
            if change.kind in (ChangeKind.INSERTED, ChangeKind.REQUEUED) and change.first_id is not None:
                self.ranges.append((change.first_id, change.last_id or change.first_id))
        messages = self._rows(storage)
        cancelled = [(c.phone, c.first_id) for c in changes
                     if c.kind is ChangeKind.CANCELLED and c.phone is not None and c.first_id is not None]
        paused = sorted({c.phone for c in changes if c.kind is ChangeKind.PAUSED and c.phone is not None})
        more = len(changes) >= CHANGES_PER_READ or bool(self.ranges)
        freed = any(c.kind is ChangeKind.BUCKETS for c in changes)
        return FeedRead(messages, cancelled, paused, more=more, buckets_freed=freed)

    def _rows(self, storage: Storage) -> list[Message]:
        found: dict[int, Message] = {}
        while self.ranges and len(found) < ROWS_PER_READ:
            first, last = self.ranges[0]  # taken off only once read: a failed read keeps it
            budget = ROWS_PER_READ - len(found)
            rows = storage.open_in_range(first, last, budget)
            found.update((m.id, m) for m in rows)
            self.ranges.popleft()
            if len(rows) == budget and rows[-1].id < last:
                self.ranges.appendleft((rows[-1].id + 1, last))  # the rest, next read
        return sorted(found.values(), key=lambda m: m.id)
