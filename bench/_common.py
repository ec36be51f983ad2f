"""What every scenario shares: the host's logs, temp directories, a counting sender, RSS, row generation.

Nothing here knows which queue it measures: each baseline reports its sends to a
`Deliveries`, which timestamps them, and rows for boot and memory runs are written
straight into postroom's `message_queue` table with raw sqlite3 (generation is not
measured, so it runs with synchronous=OFF).
"""

from __future__ import annotations

import io
import logging
import math
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO, cast

import structlog

from storage import Storage, open_database
from storage.models import to_micros

#: The table postroom, the seed baseline and the boot generator share.
INSERT_ROW = (
    "INSERT INTO message_queue (id, phone, user_id, text, attachment, priority, status, created_at, "
    "scheduled_at, available_at, attempts, max_attempts, last_error, completed_at, updated_at, "
    "idempotency_key) VALUES (?, ?, ?, ?, NULL, 1, 'pending', ?, NULL, ?, 0, 5, NULL, NULL, ?, NULL)"
)


def host_logging() -> None:
    """Configure logs as a host that wants only warnings does, for every system alike.

    stdlib `logging` at WARNING (huey, peewee, pykka and an unconfigured postroom log
    there) and structlog with a filtering bound logger at WARNING (a configured postroom
    logs there), warnings rendered on stderr. The parent and every child process call
    this first, so no system pays for log lines another is spared.
    """
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _Stderr())),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING)


class _Stderr(io.TextIOBase):
    """Resolved at each write, like the CLI's proxy, so pytest's capture sees it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@contextmanager
def temp_dir() -> Iterator[Path]:
    """A fresh directory for one run's SQLite files, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="postroom-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def phone(account: int) -> str:
    """The phone of account number `account` (every baseline uses the same ones)."""
    return f"+1555{account:07d}"


def spread(count: int, accounts: int) -> list[tuple[int, str]]:
    """`count` messages (index, phone), round robin over `accounts` accounts."""
    phones = [phone(a) for a in range(accounts)]
    return [(i, phones[i % accounts]) for i in range(count)]


class Deliveries:
    """The no-op sender's ledger: counts sends, notes when the first and the last account started.

    `record` is called from the sending threads of whichever queue runs. With `intended`
    (the instant each message was meant to be enqueued, perf_counter seconds) it also
    keeps enqueue-to-send latencies, measured from the intended instant so that a
    producer falling behind shows up as latency (no coordinated omission).
    """

    def __init__(self, expected: int, accounts: int = 0, intended: Sequence[float] | None = None) -> None:
        self.expected, self.accounts, self.intended = expected, accounts, intended
        self.count = 0
        self.first_at: float | None = None
        self.all_accounts_at: float | None = None
        self.latencies: list[float] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.all_accounts = threading.Event()

    def record(self, index: int, account: str) -> None:
        now = time.perf_counter()
        with self._lock:
            self.count += 1
            if self.first_at is None:
                self.first_at = now
            if self.intended is not None:
                self.latencies.append(now - self.intended[index])
            if self.accounts and account not in self._seen:
                self._seen.add(account)
                if len(self._seen) == self.accounts:
                    self.all_accounts_at = now
                    self.all_accounts.set()
            if self.count >= self.expected:
                self.done.set()

    @property
    def accounts_seen(self) -> int:
        with self._lock:
            return len(self._seen)

    def wait(self, timeout: float) -> None:
        """Until `expected` sends happened; raises TimeoutError with the count otherwise."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"{self.count} of {self.expected} sends within {timeout:.0f} s")


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.005) -> None:
    """Poll `check` until true; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(interval)


def median(values: Sequence[float | None]) -> float | None:
    """The median; None when there is no value or any run had none (it did not apply, or timed out)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present and len(present) == len(values) else None


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB, from /proc/self/status."""
    fields: dict[str, float] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def create_postroom_file(path: Path) -> None:
    """An empty postroom database: the schema exactly as postroom creates it."""
    store = Storage(open_database(f"sqlite:///{path}"))
    store.create_schema()
    store.close()


def write_finished_rows(path: Path, count: int, finished_at: datetime) -> None:
    """Append `count` completed rows that finished at `finished_at` (cleanup's prey)."""
    at = to_micros(finished_at)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous=OFF")  # generation is set-up, not measured
        connection.execute("BEGIN")
        connection.executemany(
            INSERT_ROW.replace("'pending'", "'completed'"),
            ((i + 1, phone(i % 100), "u", b"done", at, at, at) for i in range(count)))
        connection.execute("UPDATE message_queue SET completed_at = updated_at WHERE status = 'completed'")
        connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()


def write_rows(path: Path, rows: Iterable[tuple[int, str]], due: datetime | None = None) -> None:
    """Append pending rows (index, phone) to a postroom database, id = index + 1, text = index,
    due at `due` (default now)."""
    now = to_micros(datetime.now(UTC))
    at = now if due is None else to_micros(due)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA synchronous=OFF")  # generation is set-up, not measured
        connection.execute("BEGIN")
        connection.executemany(
            INSERT_ROW, ((i + 1, p, "u", str(i).encode(), now, at, now) for i, p in rows))
        connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
