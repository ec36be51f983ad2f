"""Long-running soak: postroom embedded in a process under steady mixed load.

    .venv/bin/python scripts/soak.py --minutes 30 --rate 200 --accounts 50

Every `--sample` seconds it records RSS, threads, open file descriptors, the rows in
the table and the supervisor's in-memory bookkeeping; cleanup is compressed to run
every minute with a one-minute retention. At the end it stops the load, waits for the
queue to drain and checks that every acknowledged message was delivered. Not part of
CI: the README reports the curve of one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor import (
    AccountSettings,
    BackoffPolicy,
    Enqueue,
    GetHealth,
    GetStats,
    Priority,
    Status,
    Supervisor,
    SupervisorSettings,
    TransientError,
)


@dataclass
class Sample:
    """One row of the curve."""

    minute: float
    rss_mb: float
    threads: int
    fds: int
    rows: int
    accounts_running: int
    acked: int
    delivered: int


class Ledger:
    """Acknowledged ids not yet delivered; only counters grow, so the harness stays flat too."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outstanding: set[int] = set()
        self.early: set[int] = set()  # delivered before the ask returned to the load thread
        self.acked = 0
        self.delivered = 0

    def ack(self, message_id: int) -> None:
        with self.lock:
            self.acked += 1
            if message_id in self.early:
                self.early.discard(message_id)
            else:
                self.outstanding.add(message_id)

    def deliver(self, message_id: int) -> None:
        with self.lock:
            if message_id in self.outstanding:
                self.outstanding.discard(message_id)
                self.delivered += 1
            elif message_id not in self.early:
                self.early.add(message_id)
                self.delivered += 1


class SoakSender:
    """Delivers after a short sleep, fails transiently at a rate, tells the ledger."""

    def __init__(self, failure_rate: float, seed: int, ledger: Ledger) -> None:
        self.rng = random.Random(seed)
        self.failure_rate = failure_rate
        self.lock = threading.Lock()
        self.ledger = ledger

    def __call__(self, message: Any) -> None:
        with self.lock:
            fail = self.rng.random() < self.failure_rate
            delay = self.rng.uniform(0.001, 0.005)
        time.sleep(delay)
        if fail:
            raise TransientError("simulated")
        self.ledger.deliver(message.id)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load(ref: Any, args: argparse.Namespace, ledger: Ledger, stop: threading.Event) -> None:
    """Offer `--rate` messages per second: mixed priorities, some scheduled up to 30 s ahead."""
    rng = random.Random(args.seed)
    interval = 1.0 / args.rate
    next_at = time.monotonic()
    while not stop.is_set():
        scheduled = (datetime.now(UTC) + timedelta(seconds=rng.uniform(1, 30))
                     if rng.random() < 0.1 else None)
        message_id = ref.ask(Enqueue(
            phone=f"+1555{rng.randrange(args.accounts):04d}", user_id=f"u{rng.randrange(10**6)}",
            text="soak", priority=rng.choice(list(Priority)), scheduled_at=scheduled,
            max_attempts=50))
        ledger.ack(message_id)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))


def sample(ref: Any, started: float, ledger: Ledger) -> Sample:
    health = ref.ask(GetHealth())
    return Sample(
        minute=round((time.monotonic() - started) / 60, 2), rss_mb=round(rss_mb(), 1),
        threads=threading.active_count(), fds=len(os.listdir("/proc/self/fd")),
        rows=ref.ask(GetStats()).total, accounts_running=health.accounts_running,
        acked=ledger.acked, delivered=ledger.delivered,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=200, help="messages offered per second")
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--failure-rate", type=float, default=0.05)
    parser.add_argument("--sample", type=float, default=30, help="seconds between samples")
    parser.add_argument("--database", default="sqlite:///soak.db")
    parser.add_argument("--json", help="write the samples here")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.database.startswith("sqlite:///"):
        for suffix in ("", "-wal", "-shm"):
            Path(args.database[len("sqlite:///"):] + suffix).unlink(missing_ok=True)
    ledger = Ledger()
    sender = SoakSender(args.failure_rate, args.seed, ledger)
    settings = SupervisorSettings(
        retention=timedelta(minutes=1), cleanup_interval=60,
        account=AccountSettings(backoff=BackoffPolicy(base=0.2, max_delay=5), idle_timeout=10),
    )
    ref = Supervisor.start(database=args.database, sender=sender, settings=settings)
    stop = threading.Event()
    loader = threading.Thread(target=load, args=(ref, args, ledger, stop), daemon=True)
    started = time.monotonic()
    loader.start()
    samples = []
    while time.monotonic() - started < args.minutes * 60:
        time.sleep(args.sample)
        samples.append(sample(ref, started, ledger))
        print(json.dumps(asdict(samples[-1])), flush=True)
    stop.set()
    loader.join()
    deadline = time.monotonic() + 120
    while (ledger.outstanding or ledger.early) and time.monotonic() < deadline:
        time.sleep(0.5)
    open_rows = sum(ref.ask(GetStats()).by_status[s] for s in
                    (Status.PENDING, Status.RETRYING, Status.PROCESSING))
    missing = len(ledger.outstanding)
    ref.stop()
    print(json.dumps({"acked": ledger.acked, "delivered": ledger.delivered,
                      "missing": missing, "open_rows": open_rows}))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(s) for s in samples], indent=1))
    return 0 if not missing and not open_rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
