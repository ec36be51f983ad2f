"""The buckets this node holds, at which epochs, and until when it may claim in them.

Written by whoever takes and gives up buckets (the writer, after the commit that took them;
the lease keeper, when the lease is renewed or lost), read by the writer before every batch
that claims: a claim in a bucket not held, or held past the node's claim deadline, is refused
without asking the database (`Fenced`), and the others are checked against the bucket rows
(`Storage.holding`) in the batch's own transaction.

The claim deadline is the last successful renewal plus the lease, less a margin, on this
process's monotonic clock: the node stops claiming before its lease can expire in the
database, however its wall clock steps and whatever a pause of the process (SIGSTOP, a swap
storm) did to it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping

__all__ = ["Holdings"]


class Holdings:
    """{bucket: epoch} this node holds, and its claim deadline (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epochs: dict[int, int] = {}
        self._until = math.inf  # monotonic; inf: no lease (the one node of an exclusive owner)
        self.node: int | None = None
        """This node's id in `postroom_nodes`, once it has joined."""

    def epochs(self, monotonic: float) -> dict[int, int]:
        """{bucket: epoch} in which this node may claim now (none past its deadline)."""
        with self._lock:
            return dict(self._epochs) if monotonic < self._until else {}

    def held(self) -> set[int]:
        """Every bucket held, deadline or not."""
        with self._lock:
            return set(self._epochs)

    def won(self, epochs: Mapping[int, int]) -> None:
        with self._lock:
            self._epochs.update(epochs)

    def given_up(self, buckets: Iterable[int]) -> None:
        with self._lock:
            for bucket in buckets:
                self._epochs.pop(bucket, None)

    def renewed(self, until: float) -> None:
        """The lease was renewed: claims go on until `until` (monotonic)."""
        with self._lock:
            self._until = until

    def lost(self) -> set[int]:
        """The lease was lost: nothing is held any more; the buckets that were."""
        with self._lock:
            held, self._epochs = set(self._epochs), {}
            return held

    def deadline(self) -> float:
        with self._lock:
            return self._until
