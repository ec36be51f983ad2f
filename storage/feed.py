"""Where the owner is in the change feed (`postroom_changes`).

The feed's sequence numbers are taken when a row is inserted, but rows become visible when
their transaction commits: on PostgreSQL a transaction that took seq 7 may commit after one
that took seq 8 was read. So the cursor keeps, beside the highest seq read, the gaps below it
that may still fill, and asks for them again until they do or `GAP_TTL` has passed (a gap
that never fills is a rolled-back transaction). On SQLite, whose writers take turns, a gap
only ever comes from a rollback. Pure: no I/O, time passed in.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["GAP_TTL", "INITIAL_GAPS", "FeedCursor"]

#: Seconds a gap below the highest seq read is asked for again: longer than any write
#: transaction of a producer may stay open (its statement timeout bounds it).
GAP_TTL = 60.0
#: Seqs below the highest at start that count as gaps if absent: transactions in progress
#: when the owner read the feed's end (each holds one seq, or a few).
INITIAL_GAPS = 100
#: At most this many gaps are kept (the oldest go first): a burst of rollbacks must not
#: make every read name thousands of seqs.
MAX_GAPS = 500


class FeedCursor:
    """The highest seq read and the gaps below it that may still fill."""

    def __init__(self, high: int, present: Iterable[int], now: float) -> None:
        """Start at `high`, the feed's highest seq, given the seqs `present` among the
        `INITIAL_GAPS` below it when it was read."""
        self.high = high
        seen = set(present)
        deadline = now + GAP_TTL
        self._gaps = {seq: deadline for seq in range(max(1, high - INITIAL_GAPS + 1), high + 1)
                      if seq not in seen}

    @property
    def gaps(self) -> list[int]:
        """The seqs to ask for again, ascending."""
        return sorted(self._gaps)

    def read(self, seqs: Iterable[int], now: float) -> list[int]:
        """Take in the seqs a read returned (those above `high` or among the gaps); the ones
        not seen before, ascending. Gaps past their time are dropped."""
        fresh = sorted(seq for seq in set(seqs) if seq > self.high or seq in self._gaps)
        for seq in fresh:
            self._gaps.pop(seq, None)
        if fresh and fresh[-1] > self.high:
            deadline = now + GAP_TTL
            missing = set(range(self.high + 1, fresh[-1])) - set(fresh)
            self._gaps.update(dict.fromkeys(missing, deadline))
            self.high = fresh[-1]
        self._gaps = {seq: deadline for seq, deadline in self._gaps.items() if deadline > now}
        if len(self._gaps) > MAX_GAPS:
            self._gaps = dict(sorted(self._gaps.items())[-MAX_GAPS:])
        return fresh
