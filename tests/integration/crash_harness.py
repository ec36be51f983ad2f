"""A child process running postroom, and the oracle that judges what survived its deaths.

The child (`python -m tests.integration.crash_harness child ...`) enqueues a plan of
messages, printing `ACK <index> <id>` once each `ask` is answered, and sends them
through a sender that records every attempt in a ledger (its own SQLite file)
before it returns. The parent kills it with SIGKILL at random moments, starts it
again, and at the end compares the queue, the ledger and the acknowledgements
(modelled on Jepsen's queue checker: lost, duplicated, unexpected, order).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


# -- the ledger: what the "platform" received ---------------------------------------------


class Ledger:
    """Every attempt the sender saw, committed before the sender returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._connect().executescript(
            "PRAGMA journal_mode=WAL;"
            "CREATE TABLE IF NOT EXISTS attempts (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " message_id INTEGER, phone TEXT, priority INTEGER, outcome TEXT, pid INTEGER);"
        )

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def record(self, message_id: int, phone: str, priority: int, outcome: str) -> None:
        self._connect().execute(
            "INSERT INTO attempts (message_id, phone, priority, outcome, pid) VALUES (?,?,?,?,?)",
            (message_id, phone, priority, outcome, os.getpid()),
        )

    def rows(self) -> list[tuple[int, int, str, int, str]]:
        return self._connect().execute(
            "SELECT seq, message_id, phone, priority, outcome FROM attempts ORDER BY seq"
        ).fetchall()


class LedgerSender:
    """Sleeps like a network call, fails transiently at a rate, and logs each attempt first."""

    def __init__(self, ledger: Ledger, latency_ms: tuple[float, float], failure_rate: float,
                 seed: int) -> None:
        self.ledger = ledger
        self.latency = latency_ms
        self.failure_rate = failure_rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    def __call__(self, message: Any) -> None:
        from actors._faults import crash_point
        from actors.errors import TransientError

        with self.lock:
            delay = self.rng.uniform(*self.latency) / 1000
            fail = self.rng.random() < self.failure_rate
        time.sleep(delay)
        crash_point("send.inside")  # the platform has not received it
        outcome = "failed" if fail else "delivered"
        self.ledger.record(message.id, message.phone, int(message.priority), outcome)
        crash_point("send.after")  # received, and postroom does not know yet
        if fail:
            raise TransientError("simulated")


# -- the plan -------------------------------------------------------------------------------


def make_plan(messages: int, accounts: int, seed: int) -> list[dict[str, Any]]:
    """Messages over accounts with mixed priorities (deterministic for a seed)."""
    rng = random.Random(seed)
    return [
        {"phone": f"+1555{rng.randrange(accounts):04d}", "user_id": f"u{i}", "text": f"m{i}",
         "priority": rng.choice([0, 1, 1, 1, 2])}
        for i in range(messages)
    ]


# -- the child ------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT))
    import structlog

    # Logs go to stderr: stdout carries only the ACK protocol.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    from actors.account import AccountSettings
    from actors.retry import BackoffPolicy
    from postroom_common import Delivery, Priority, Status
    from supervisor import Enqueue, GetStats, Supervisor, SupervisorSettings

    plan = json.loads(Path(args.plan).read_text())
    start_at = int(args.start)
    sender = LedgerSender(Ledger(Path(args.ledger)), (args.min_ms, args.max_ms),
                          args.failure_rate, seed=os.getpid())
    settings = SupervisorSettings(
        delivery=Delivery(args.delivery),
        account=AccountSettings(backoff=BackoffPolicy(base=0.02, max_delay=0.2), idle_timeout=None),
    )
    ref = Supervisor.start(database=args.db, sender=sender, settings=settings)
    out_lock = threading.Lock()

    def enqueue(indexes: range) -> None:
        for index in indexes:
            item = plan[index]
            message_id = ref.ask(Enqueue(phone=item["phone"], user_id=item["user_id"],
                                         text=item["text"], priority=Priority(item["priority"]),
                                         max_attempts=args.max_attempts,
                                         idempotency_key=f"plan-{index}"))
            with out_lock:
                print(f"ACK {index} {message_id}", flush=True)

    todo = range(start_at, len(plan))
    threads = [threading.Thread(target=enqueue, args=(todo[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("ENQUEUED_ALL", flush=True)
    open_states = (Status.PENDING, Status.RETRYING, Status.PROCESSING)
    while any(ref.ask(GetStats()).by_status[s] for s in open_states):
        time.sleep(0.05)
    ref.stop()
    print("DRAINED", flush=True)
    return 0


# -- the parent -----------------------------------------------------------------------------


@dataclass
class Run:
    """What the parent saw across every incarnation of the child."""

    acked: dict[int, int] = field(default_factory=dict)  # plan index -> message id
    in_flight_at_kills: int = 0
    # Ids PROCESSING at a kill whose delivery the ledger already had: the only legal resends.
    sent_unrecorded: set[int] = field(default_factory=set)
    kills: int = 0
    integrity: list[str] = field(default_factory=list)
    drained: bool = False


class Harness:
    """Start, kill and restart the child; then judge."""

    def __init__(self, workdir: Path, messages: int, accounts: int, seed: int,
                 failure_rate: float = 0.05, latency_ms: tuple[float, float] = (1, 5),
                 delivery: str = "at_least_once", max_attempts: int = 20) -> None:
        self.db_path = workdir / "queue.db"
        self.ledger_path = workdir / "ledger.db"
        self.plan_path = workdir / "plan.json"
        self.plan = make_plan(messages, accounts, seed)
        self.plan_path.write_text(json.dumps(self.plan))
        self.rng = random.Random(seed)
        self.failure_rate = failure_rate
        self.latency = latency_ms
        self.delivery = delivery
        self.max_attempts = max_attempts
        self.run = Run()

    def _command(self) -> list[str]:
        # Resume after the highest contiguous acknowledged index: idempotency keys make
        # re-enqueueing an already committed message a no-op that answers its id.
        start = 0
        while start in self.run.acked:
            start += 1
        return [sys.executable, "-m", "tests.integration.crash_harness", "child",
                "--db", f"sqlite:///{self.db_path}", "--ledger", str(self.ledger_path),
                "--plan", str(self.plan_path), "--start", str(start),
                "--min-ms", str(self.latency[0]), "--max-ms", str(self.latency[1]),
                "--failure-rate", str(self.failure_rate), "--delivery", self.delivery,
                "--max-attempts", str(self.max_attempts)]

    def _spawn(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if k != "POSTROOM_CRASH_AT"}
        env.update({"PYTHONPATH": str(ROOT), **(extra_env or {})})
        return subprocess.Popen(self._command(), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)

    def _reader(self, proc: subprocess.Popen[str]) -> threading.Thread:
        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "ACK":
                    self.run.acked[int(parts[1])] = int(parts[2])
                elif parts == ["DRAINED"]:
                    self.run.drained = True

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    def kill_cycle(self, min_s: float, max_s: float) -> None:
        """Start the child, let it run a random while, SIGKILL it, inspect the remains."""
        proc = self._spawn()
        reader = self._reader(proc)
        time.sleep(self.rng.uniform(min_s, max_s))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join(5)
        _close(proc)
        self.run.kills += 1
        self._inspect_after_kill()

    def _inspect_after_kill(self) -> None:
        if not self.db_path.exists():
            return
        conn = sqlite3.connect(self.db_path, timeout=30)
        try:
            self.run.integrity.append(conn.execute("PRAGMA integrity_check").fetchone()[0])
            try:
                processing = {i for (i,) in conn.execute(
                    "SELECT id FROM message_queue WHERE status='processing'")}
            except sqlite3.OperationalError:  # killed before the schema existed
                processing = set()
            self.run.in_flight_at_kills += len(processing)
            delivered = {mid for _, mid, _, _, outcome in Ledger(self.ledger_path).rows()
                         if outcome == "delivered"}
            self.run.sent_unrecorded |= processing & delivered
        finally:
            conn.close()

    def crash_run(self, crash_at: str, timeout: float = 120) -> int:
        """Run the child with a crash point armed until it dies there; returns its exit code."""
        proc = self._spawn({"POSTROOM_CRASH_AT": crash_at})
        reader = self._reader(proc)
        try:
            code = proc.wait(timeout)
        finally:
            proc.kill()
            proc.wait()
            reader.join(5)
            _close(proc)
        self._inspect_after_kill()
        return code

    def finish(self, timeout: float = 300) -> None:
        """One clean run to the end: every message enqueued and settled."""
        proc = self._spawn()
        reader = self._reader(proc)
        try:
            proc.wait(timeout)
        finally:
            proc.kill()
            proc.wait()
            reader.join(5)
            _close(proc)

    def verdict(self) -> Verdict:
        return judge(self.db_path, Ledger(self.ledger_path), self.run, len(self.plan))


def _close(proc: subprocess.Popen[str]) -> None:
    if proc.stdout is not None:
        proc.stdout.close()


@dataclass
class Verdict:
    """The oracle's findings."""

    acked: int
    lost: list[int]
    lost_as: dict[int, str]
    """Each lost id's status at the end ("missing": acknowledged, yet no row)."""
    unexpected: list[int]
    duplicates: int
    duplicated_ids: set[int]
    not_final: list[tuple[int, str]]
    order_violations: list[str]
    statuses: dict[str, int]


def judge(db_path: Path, ledger: Ledger, run: Run, planned: int) -> Verdict:
    conn = sqlite3.connect(db_path)
    rows = {mid: (status, phone) for mid, status, phone in
            conn.execute("SELECT id, status, phone FROM message_queue")}
    conn.close()
    acked_ids = set(run.acked.values())
    lost = sorted(i for i in acked_ids if rows.get(i, ("missing",))[0] not in ("completed", "failed"))
    attempts = ledger.rows()
    delivered: dict[int, int] = defaultdict(int)
    for _, mid, _, _, outcome in attempts:
        if outcome == "delivered":
            delivered[mid] += 1
    unexpected = sorted(mid for mid in delivered if mid not in rows)
    duplicates = sum(count - 1 for count in delivered.values() if count > 1)
    duplicated_ids = {mid for mid, count in delivered.items() if count > 1}
    not_final = sorted((mid, s) for mid, (s, _) in rows.items()
                       if s not in ("completed", "failed", "cancelled"))
    statuses: dict[str, int] = defaultdict(int)
    for status, _ in rows.values():
        statuses[status] += 1
    return Verdict(acked=len(acked_ids), lost=lost,
                   lost_as={i: rows.get(i, ("missing",))[0] for i in lost}, unexpected=unexpected,
                   duplicates=duplicates, duplicated_ids=duplicated_ids, not_final=not_final,
                   order_violations=order_violations(attempts), statuses=dict(statuses))


def order_violations(attempts: list[tuple[int, int, str, int, str]]) -> list[str]:
    """FIFO within a priority per account, among messages that never failed an attempt.

    A message that failed is retried after its backoff, legitimately behind younger ones.
    """
    failed = {mid for _, mid, _, _, outcome in attempts if outcome == "failed"}
    first_seen: dict[int, tuple[int, str, int]] = {}
    for seq, mid, phone, priority, _ in attempts:
        first_seen.setdefault(mid, (seq, phone, priority))
    lanes: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for mid, (seq, phone, priority) in first_seen.items():
        if mid not in failed:
            lanes[(phone, priority)].append((seq, mid))
    problems = []
    for lane, sends in lanes.items():
        ids_in_send_order = [mid for _, mid in sorted(sends)]
        if ids_in_send_order != sorted(ids_in_send_order):
            problems.append(f"{lane}: {ids_in_send_order[:20]}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("child")
    c.add_argument("--db", required=True)
    c.add_argument("--ledger", required=True)
    c.add_argument("--plan", required=True)
    c.add_argument("--start", default="0")
    c.add_argument("--min-ms", type=float, default=1)
    c.add_argument("--max-ms", type=float, default=5)
    c.add_argument("--failure-rate", type=float, default=0.05)
    c.add_argument("--delivery", default="at_least_once")
    c.add_argument("--max-attempts", type=int, default=20)
    return child(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
