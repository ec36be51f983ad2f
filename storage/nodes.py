"""The queries of nodes and buckets: leases on the database's clock, taking and letting go
of buckets at their epochs, and the check that fences a batch of claims.

A part of `Storage` (it inherits them), written apart: they are the coordination of the
processes that send, where the rest of `Storage` is the queue itself.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import peewee

from postroom_common.buckets import BUCKETS, bucket_of
from postroom_common.domain import Change, ChangeKind, Delivery, Message, NodeState
from postroom_common.errors import StorageError
from postroom_common.logs import get_logger
from storage._sql import Dialect, chunks
from storage.models import to_micros

__all__ = ["NodeQueries"]

log = get_logger("postroom.storage")

#: lease_expires_at of the one owner of a database, whose lease does not expire.
NEVER = 2**62


class NodeQueries:
    """Nodes, leases and buckets (see the module); `Storage` provides the connection."""

    if TYPE_CHECKING:
        db: peewee.Database
        _dialect: Dialect

        def _guard(self) -> AbstractContextManager[None]: ...
        def _executemany(self, sql: str, params: Sequence[tuple[Any, ...]]) -> None: ...
        def _in_flight_with_epochs(self) -> list[tuple[Message, int | None]]: ...
        def settle_interrupted(self, interrupted: Sequence[Message], delivery: Delivery,
                               now: datetime) -> list[Message]: ...
        def announce(self, changes: Sequence[Change], now: datetime) -> None: ...

    def join(self, holder: str, lease: float | None) -> int:
        """Record this process as a node whose lease ends `lease` seconds from now by the
        database's clock (None: never, for the one node of an exclusive owner); its id."""
        with self._guard(), self.db.atomic():
            cursor = self.db.execute_sql(self._dialect.sql(
                "INSERT INTO postroom_nodes (holder, joined_at, lease_expires_at)"
                f" VALUES (?, {self._dialect.now_micros()}, {self._lease_end()}) RETURNING id"),
                (holder, *self._lease_params(lease)))
            return int(cursor.fetchone()[0])

    def renew(self, node: int, lease: float, lock_wait: float) -> bool:
        """Extend the node's lease to `lease` seconds from the database's now; False when its row
        is gone (another node found it expired and removed it). Waits at most `lock_wait` for
        its row (a transaction of another process, paused, may hold it): a renewal that cannot
        be made at once fails, and the next one is tried, well before the lease runs out."""
        with self._guard(), self.db.atomic():
            if not self._dialect.is_sqlite:
                self.db.execute_sql(f"SET LOCAL lock_timeout = {max(1, round(lock_wait * 1000))}")
            cursor = self.db.execute_sql(self._dialect.sql(
                f"UPDATE postroom_nodes SET lease_expires_at = {self._lease_end()} WHERE id = ?"),
                (*self._lease_params(lease), node))
            return int(cursor.rowcount) == 1

    def _lease_end(self) -> str:
        return (f"CASE WHEN CAST(? AS BIGINT) IS NULL THEN {NEVER}"
                f" ELSE {self._dialect.now_micros()} + CAST(? AS BIGINT) END")

    @staticmethod
    def _lease_params(lease: float | None) -> tuple[int | None, int | None]:
        micros = None if lease is None else round(lease * 1_000_000)
        return micros, micros

    def leave(self, node: int) -> None:
        """The node goes: its buckets are free for the others at once (their epochs kept: the next
        owner bumps them, and is woken), and its row is removed."""
        with self._guard(), self.db.atomic():
            self.db.execute_sql(self._dialect.sql("UPDATE postroom_buckets SET node = NULL WHERE node = ?"),
                                (node,))
            self.db.execute_sql(self._dialect.sql("DELETE FROM postroom_nodes WHERE id = ?"), (node,))
            self._buckets_freed()

    def _buckets_freed(self) -> None:
        """Tell the other nodes, in the change feed, that buckets are free: they take them at once."""
        self.announce([Change(ChangeKind.BUCKETS)], datetime.now(UTC))

    def clock_skew(self) -> float:
        """Seconds the database's clock is ahead of this machine's (negative: behind)."""
        with self._guard():
            before = time.time()
            (micros,) = self.db.execute_sql(f"SELECT {self._dialect.now_micros()}").fetchone()
            after = time.time()
        return int(micros) / 1_000_000 - (before + after) / 2

    def forget_dead_nodes(self, expired_for: float) -> int:
        """Remove the rows of nodes whose lease expired more than `expired_for` seconds ago (killed
        without leaving); how many. Their buckets name them still, which is as good as free (an
        owner whose row is gone is no live node). A node paused that long finds its row gone at
        its next renewal, and joins again. Rows another transaction holds are left for later:
        this never waits."""
        cutoff = f"{self._dialect.now_micros()} - CAST(? AS BIGINT)"
        # A node still named by a bucket is kept: its name is how a taker finds its sessions.
        pick = (f"SELECT id FROM postroom_nodes n WHERE lease_expires_at < {cutoff}"
                " AND NOT EXISTS (SELECT 1 FROM postroom_buckets b WHERE b.node = n.id)")
        if not self._dialect.is_sqlite:
            pick += " FOR UPDATE SKIP LOCKED"
        with self._guard(), self.db.atomic():
            cursor = self.db.execute_sql(self._dialect.sql(
                f"DELETE FROM postroom_nodes WHERE id IN ({pick})"), (round(expired_for * 1_000_000),))
            return int(cursor.rowcount)

    def forget_node(self, node: int) -> None:
        """Remove a node's row, its buckets as good as free from now (a node that lost its lease
        lets go of its old self so; unlike `leave`, no bucket row is touched, so nothing waits)."""
        with self._guard(), self.db.atomic():
            self.db.execute_sql(self._dialect.sql("DELETE FROM postroom_nodes WHERE id = ?"), (node,))
            self._buckets_freed()

    def bucket_owners(self) -> tuple[list[int], dict[int, int | None]]:
        """The live nodes (lease not expired by the database's clock), and each bucket's owner:
        None for a bucket nobody holds or whose owner's lease has expired."""
        now = self._dialect.now_micros()
        with self._guard():
            live = [int(node) for (node,) in self.db.execute_sql(
                f"SELECT id FROM postroom_nodes WHERE lease_expires_at > {now} ORDER BY id").fetchall()]
            rows = self.db.execute_sql("SELECT bucket, node FROM postroom_buckets").fetchall()
        alive = set(live)
        owners: dict[int, int | None] = dict.fromkeys(range(BUCKETS))
        owners.update({int(bucket): int(node) if node in alive else None for bucket, node in rows})
        return live, owners

    def take_buckets(self, node: int, buckets: Sequence[int], delivery: Delivery, now: datetime,
                     *, force: bool = False) -> tuple[dict[int, int], list[Message]]:
        """Take the buckets nobody holds, or whose owner's lease has expired (`force`: every one,
        for the exclusive owner), each at a new epoch; then settle, by the delivery policy, what
        their former owners left in flight (rows claimed under an older epoch). Inside
        write_transaction. ({bucket: its new epoch}, the rows settled, as written).

        A former owner's claim in progress holds its bucket's row `FOR SHARE` (`holding`): the
        bump waits for its commit, so its claim is settled here, or refused after."""
        if not buckets:
            return {}, []
        if not force:
            self._end_sessions_of_expired_owners(sorted(set(buckets)))
        taken: dict[int, int] = {}
        with self._guard():
            for chunk, marks in chunks(sorted(set(buckets))):
                self._executemany(self._dialect.sql(
                    "INSERT INTO postroom_buckets (bucket, epoch) VALUES (?, 0)"
                    " ON CONFLICT (bucket) DO NOTHING"), [(bucket,) for bucket in chunk])
                # Locked in bucket order first, as `holding` locks them: two nodes never deadlock.
                self.db.execute_sql(self._dialect.sql(
                    f"SELECT bucket FROM postroom_buckets WHERE bucket IN ({marks}) ORDER BY bucket"
                ) + self._dialect.lock_rows(), chunk)
                now_db = self._dialect.now_micros()
                free = "" if force else (
                    " AND (node IS NULL OR node = ? OR NOT EXISTS (SELECT 1 FROM postroom_nodes n"
                    f" WHERE n.id = postroom_buckets.node AND n.lease_expires_at > {now_db}))")
                rows = self.db.execute_sql(self._dialect.sql(
                    f"UPDATE postroom_buckets SET node = ?, epoch = epoch + 1, taken_at = ?"
                    f" WHERE bucket IN ({marks}){free} RETURNING bucket, epoch"),
                    (node, to_micros(now), *chunk, *(() if force else (node,)))).fetchall()
                taken.update((int(bucket), int(epoch)) for bucket, epoch in rows)
        left = [m for m in self._in_flight_with_epochs()
                if (b := bucket_of(m[0].phone)) in taken and (m[1] is None or m[1] < taken[b])]
        return taken, self.settle_interrupted([m for m, _ in left], delivery, now)

    def _end_sessions_of_expired_owners(self, buckets: Sequence[int]) -> int:
        """PostgreSQL: end the sessions of the nodes whose lease expired and which still own some
        of `buckets` (found by their application_name, the node's holder name), so that a node
        paused mid-transaction (SIGSTOP) does not hold the rows a take must lock. The server's
        idle-in-transaction timeout does not serve: a session paused inside a pipelined batch
        (psycopg's executemany) is not idle to it. Refused (another role's sessions), the take
        goes on and waits as long as `lock_timeout` lets it. How many sessions were ended."""
        if self._dialect.is_sqlite:
            return 0
        ended: list[Any] = []
        now = self._dialect.now_micros()
        for chunk, marks in chunks(buckets):
            try:
                with self._guard(), self.db.atomic():  # a savepoint inside the writer's transaction
                    ended += self.db.execute_sql(self._dialect.sql(
                        "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a"
                        " WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()"
                        " AND a.application_name IN (SELECT n.holder FROM postroom_nodes n"
                        " JOIN postroom_buckets b ON b.node = n.id"
                        f" WHERE b.bucket IN ({marks}) AND n.lease_expires_at <= {now})"),
                        chunk).fetchall()
            except StorageError as refused:
                log.warning("buckets.sessions_not_ended", error=str(refused).splitlines()[0],
                            left="the take waits for their locks, within lock_timeout")
        if ended:
            log.warning("buckets.sessions_ended", sessions=len(ended),
                        reason="their node's lease expired: a paused process would hold its locks")
        return len(ended)

    def release_buckets(self, node: int, buckets: Sequence[int]) -> None:
        """Let go of buckets this node holds (a handoff), their epochs kept: the next owner
        bumps them. Inside write_transaction."""
        for chunk, marks in chunks(sorted(set(buckets))):
            self._executemany(self._dialect.sql(
                f"UPDATE postroom_buckets SET node = NULL WHERE node = ? AND bucket IN ({marks})"),
                [(node, *chunk)])
        self._buckets_freed()

    def holding(self, node: int, epochs: Mapping[int, int]) -> set[int]:
        """Of the buckets of `epochs` ({bucket: epoch}), those `node` still holds at that epoch,
        kept so until the commit (`FOR SHARE`: a takeover waits for it). Inside
        write_transaction, before the claims it fences. SQLite: all of them, asked nothing (one
        node per file: its file lock keeps every other out)."""
        if self._dialect.is_sqlite or not epochs:
            return set(epochs)
        held: set[int] = set()
        for chunk, marks in chunks(sorted(epochs)):
            with self._guard():
                rows = self.db.execute_sql(self._dialect.sql(  # locked in bucket order, as a take locks them
                    f"SELECT bucket, epoch FROM postroom_buckets WHERE bucket IN ({marks}) AND node = ?"
                    " ORDER BY bucket FOR SHARE"), (*chunk, node)).fetchall()
            held.update(int(b) for b, epoch in rows if epochs[int(b)] == int(epoch))
        return held

    def _nodes(self) -> tuple[NodeState, ...]:
        """Every node row, with its lease left and how many buckets it holds."""
        if not self.db.table_exists("postroom_nodes"):
            return ()  # a schema older than nodes (read commands do not migrate)
        now = self._dialect.now_micros()
        with self._guard():
            rows = self.db.execute_sql(
                f"SELECT n.id, n.holder, n.lease_expires_at, n.lease_expires_at - {now},"
                " (SELECT COUNT(*) FROM postroom_buckets b WHERE b.node = n.id)"
                " FROM postroom_nodes n ORDER BY n.id").fetchall()
        return tuple(NodeState(int(node), str(holder), None if int(ends) >= NEVER else int(left) / 1e6,
                               int(buckets)) for node, holder, ends, left, buckets in rows)
