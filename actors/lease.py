"""A node's lease on its database: renewed on a thread and a connection of its own.

Several nodes share one PostgreSQL database by owning buckets of accounts
(`postroom_common.buckets`). Each node has a row in `postroom_nodes` whose
`lease_expires_at` it pushes `lease` seconds past the database's clock every `lease / 5`
seconds, here, away from the actors' threads and the timer, so that no queue of turns, no
busy writer and no step of this machine's wall clock delays it. After each renewal the keeper
reads who holds what, places the buckets over the live nodes (rendezvous hashing) and reports
the moves that concern this node: buckets to take (free, or their owner's lease expired) and
buckets to hand over (placed on another live node); the supervisor carries them out.

The node stops claiming at its own deadline, the start of its last successful renewal plus
the lease less a margin, on the monotonic clock: before its lease can expire in the database
(`Holdings`). A renewal that comes too late, or finds the node's row removed, means the
lease is lost: the buckets are given up at once (`on_lost`), the row is left, and the node
joins again as a new one, taking buckets afresh at new epochs. Nothing here is terminal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from actors.holdings import Holdings
from postroom_common import PostroomError, StorageError, ValidationError
from postroom_common.buckets import moves, placement
from postroom_common.checks import check_count, check_seconds
from postroom_common.logs import get_logger
from storage import Storage

__all__ = ["ClockSkew", "LeaseKeeper", "NodeSettings"]

log = get_logger("postroom.lease")

#: The shortest lease a node may take, in seconds.
MIN_LEASE = 1.0
#: Seconds a stop waits for a renewal under way (the thread is a daemon: it goes with the process).
STOP_JOIN = 2.0


class ClockSkew(PostroomError):
    """This machine's wall clock and the database's differ by more than `max_clock_skew`."""


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """How a node shares a PostgreSQL database with others (`SupervisorSettings.nodes`)."""

    lease: float = 15.0
    """Seconds a node's lease lasts past its last renewal, by the database's clock: how long
    its buckets wait before another node may take them when it dies or hangs."""
    max_moves: int = 8
    """Buckets handed over to a joining node per renewal at most: the work moves a few buckets
    at a time (free buckets are taken all at once: their accounts are waiting)."""
    max_clock_skew: float = 5.0
    """Seconds this machine's wall clock may differ from the database's: a node refuses to start
    past it (schedules and pauses are instants of the wall clock)."""

    def __post_init__(self) -> None:
        check_seconds("NodeSettings.lease", self.lease, positive=True)
        if self.lease < MIN_LEASE:  # renewed every fifth of it: shorter would hammer the database
            raise ValidationError(f"NodeSettings.lease must be at least {MIN_LEASE} s, not {self.lease!r}")
        check_count("NodeSettings.max_moves", self.max_moves, minimum=1)
        check_seconds("NodeSettings.max_clock_skew", self.max_clock_skew, positive=True)

    @property
    def renew_every(self) -> float:
        """Seconds between two renewals."""
        return self.lease / 5

    @property
    def margin(self) -> float:
        """Seconds before the lease's end at which the node stops claiming."""
        return self.lease / 5


class LeaseKeeper:
    """Joins, renews, places; reports moves and losses (see the module)."""

    def __init__(self, storage: Storage, holdings: Holdings, settings: NodeSettings, holder: str, *,
                 on_moves: Callable[[list[int], list[int]], None],
                 on_lost: Callable[[set[int]], None]) -> None:
        self.storage = storage
        self.holdings = holdings
        self.settings = settings
        self.holder = holder
        self._on_moves = on_moves
        self._on_lost = on_lost
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="postroom-lease", daemon=True)
        self.renewed_at: float | None = None
        """Monotonic instant of the start of the last successful renewal."""

    # -- the caller's side ---------------------------------------------------------------

    def join(self) -> int:
        """Check the clocks, then join as a new node (in the caller's thread, at start); its id."""
        skew = self.storage.clock_skew()
        if abs(skew) > self.settings.max_clock_skew:
            raise ClockSkew(
                f"this machine's clock is {skew:+.1f} s from the database's (at most "
                f"{self.settings.max_clock_skew} s allowed, NodeSettings.max_clock_skew): fix its "
                "time synchronisation (schedules and pauses are instants of the wall clock)")
        started = time.monotonic()
        node = self.storage.join(self.holder, self.settings.lease)
        self.holdings.node = node
        self._renewed(started)
        log.info("node.joined", node=node, lease=self.settings.lease)
        return node

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        """Renew and place now (a bucket was let go somewhere: take it at once)."""
        self._wake.set()

    def stop(self, *, leave: bool) -> None:
        """Stop renewing; `leave`: remove this node's row and free its buckets at once (a
        graceful stop, its accounts released); otherwise its lease runs out."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():  # a renewal under way ends within the stop's cut of calls
            self._thread.join(timeout=STOP_JOIN)
        node = self.holdings.node
        if leave and node is not None:
            try:
                self.storage.leave(node)
                log.info("node.left", node=node)
            except StorageError as error:
                log.warning("node.leave_failed", node=node, error=str(error),
                            left="its buckets are free once its lease expires")
        self.holdings.lost()

    # -- the lease's thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.settings.renew_every)
            self._wake.clear()
            if self._stopping:
                break
            try:
                self.tick()
            except Exception as error:  # noqa: BLE001 - the lease must outlive any one tick
                log.error("lease.tick_failed", error=f"{type(error).__name__}: {error}")
        self.storage.close()  # this thread's connection

    def tick(self) -> None:
        """One renewal, then the moves it allows."""
        started = time.monotonic()
        if started >= self.holdings.deadline():
            self._lost("the lease was not renewed before its claim deadline (the process or its "
                       "database connection stalled)")
            return
        node = self.holdings.node
        assert node is not None, "tick before join"
        try:
            renewed = self.storage.renew(node, self.settings.lease, lock_wait=self.settings.renew_every / 2)
        except StorageError as error:
            log.warning("lease.renew_failed", node=node, error=str(error))
            return  # tried again at the next tick, until the deadline
        if not renewed:
            self._lost("the node's row was removed (another node found its lease expired)")
            return
        self._renewed(started)
        forgotten = self.storage.forget_dead_nodes(self.settings.lease)
        if forgotten:
            log.info("nodes.forgotten", nodes=forgotten, reason="their leases expired long ago")
        live, owners = self.storage.bucket_owners()
        take, give = moves(owners, placement(live), node, self.settings.max_moves)
        if take or give:
            self._on_moves(take, give)

    def _renewed(self, started: float) -> None:
        self.renewed_at = started
        self.holdings.renewed(started + self.settings.lease - self.settings.margin)

    def _lost(self, reason: str) -> None:
        """Give up every bucket, let go of the old row, and join again as a new node."""
        held = self.holdings.lost()
        old = self.holdings.node
        log.error("lease.lost", node=old, buckets=len(held), reason=reason)
        self._on_lost(held)
        try:
            if old is not None:
                self.storage.forget_node(old)  # its buckets touched by nobody: nothing to wait for
            self.join()
        except (StorageError, ClockSkew) as error:
            log.warning("lease.rejoin_failed", error=str(error), left="tried again at the next tick")
            self.holdings.node = old
