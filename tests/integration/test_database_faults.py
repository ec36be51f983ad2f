"""Database faults: I/O errors, a full disk, a read-only file, another process holding the lock.

Pass criteria for each: the enqueuer gets a typed error exactly for messages that
were not committed, no acknowledgement without a commit, nothing accepted is lost,
work resumes without a restart once the fault clears, and health says degraded
while it lasts.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pykka
import pytest

from storage import Storage, open_database
from supervisor import (
    AccountSettings,
    Enqueue,
    EnqueueBatch,
    GetHealth,
    GetStats,
    Status,
    StorageError,
    Supervisor,
    SupervisorSettings,
)
from tests.conftest import eventually
from tests.integration.faults import FaultySqliteDatabase
from tests.integration.helpers import FixedRandom, RecordingSender

FAST = SupervisorSettings(account=AccountSettings(storage_retry=0.02, idle_timeout=None))


def start(db: FaultySqliteDatabase, sender: Any) -> pykka.ActorRef[Supervisor]:
    return Supervisor.start(database=db, sender=sender, settings=FAST, rng=FixedRandom())


class Enqueuer:
    """Enqueues with unique idempotency keys and remembers what was answered."""

    def __init__(self, ref: pykka.ActorRef[Supervisor]) -> None:
        self.ref = ref
        self.acked: dict[str, int] = {}
        self.refused: list[str] = []
        self.other: list[BaseException] = []
        self._lock = threading.Lock()
        self._n = 0

    def one(self, phone: str = "+15550001") -> int | None:
        with self._lock:
            self._n += 1
            key = f"k{self._n}"
        try:
            message_id = self.ref.ask(Enqueue(phone=phone, user_id="u", text=key,
                                              idempotency_key=key))
        except StorageError:
            with self._lock:
                self.refused.append(key)
            return None
        except BaseException as error:  # noqa: BLE001 - anything else is a test failure
            with self._lock:
                self.other.append(error)
            return None
        with self._lock:
            self.acked[key] = message_id
        return int(message_id)

    def check_against(self, path: Path) -> None:
        """Acked keys have their committed row; refused keys have none."""
        storage = Storage(open_database(f"sqlite:///{path}"))
        rows = {m.idempotency_key: m for phone in {"+15550001", "+15550002", "+15550003"}
                for m in storage.list_messages(phone, limit=10**6)}
        storage.close()
        assert self.other == []
        for key, message_id in self.acked.items():
            assert key in rows and rows[key].id == message_id, f"acked {key} was not committed"
        for key in self.refused:
            assert key not in rows, f"{key} was refused yet written"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_nth_write_fails_for_n_1_to_300(tmp_path: Path) -> None:
    """An I/O error on the 1st, then 2nd, ... 300th write from now: only unwritten messages are refused."""
    db = FaultySqliteDatabase(str(tmp_path / "q.db"))
    sender = RecordingSender()
    ref = start(db, sender)
    enqueuer = Enqueuer(ref)
    stop = threading.Event()

    def load(phone: str) -> None:
        while not stop.is_set():
            if len(enqueuer.acked) - sender.count() > 200:
                time.sleep(0.002)  # keep the backlog small: the test is about faults, not load
                continue
            enqueuer.one(phone)

    workers = [threading.Thread(target=load, args=(f"+1555000{k}",)) for k in (1, 2, 3)]
    for worker in workers:
        worker.start()
    for n in range(1, 301):
        db.fail_nth_write(n)
        eventually(lambda n=n: db.injected >= n, timeout=30, interval=0.001)
    stop.set()
    for worker in workers:
        worker.join()
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == len(enqueuer.acked),
               timeout=60)
    assert not ref.ask(GetHealth()).degraded
    ref.stop()
    enqueuer.check_against(tmp_path / "q.db")
    assert len(enqueuer.acked) > 300
    assert sorted(set(sender.ids())) == sorted(enqueuer.acked.values())


@pytest.mark.parametrize("fault", ["disk_full", "read_only"])
@pytest.mark.timeout(60)
def test_disk_full_or_read_only_then_recovers(tmp_path: Path, fault: str) -> None:
    """While the disk is full (or the file read-only) enqueues fail typed; afterwards all resumes."""
    path = tmp_path / "q.db"
    db = FaultySqliteDatabase(str(path))
    sender = RecordingSender()
    ref = start(db, sender)
    enqueuer = Enqueuer(ref)
    before = [enqueuer.one() for _ in range(20)]
    eventually(lambda: len(sender.ids()) == 20)
    if fault == "disk_full":
        (pages,) = db.execute_sql("PRAGMA page_count").fetchone()
        db.page_limit = pages  # no page may be added
        payload = "x" * 3000  # a few of these fill the free pages of the last one
        refused = 0
        for _ in range(50):
            try:
                ref.ask(Enqueue(phone="+15550001", user_id="u", text=payload))
            except StorageError as error:
                refused += 1
                assert "full" in str(error)
        assert refused > 0
    else:
        db.read_only = True
        for _ in range(5):
            assert enqueuer.one() is None
    health = ref.ask(GetHealth())
    assert health.degraded and health.last_error
    db.page_limit, db.read_only = None, False
    after = [enqueuer.one() for _ in range(20)]
    assert all(after) and all(before)
    eventually(lambda: ref.ask(GetStats()).by_status[Status.PENDING] == 0
               and not ref.ask(GetStats()).by_status[Status.PROCESSING])
    assert not ref.ask(GetHealth()).degraded
    ref.stop()
    enqueuer.check_against(path)


LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("LOCKED", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def hold_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    """A second process takes the write lock for `seconds`; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "LOCKED"
    return proc


@pytest.mark.parametrize(
    ("hold", "busy", "refused"),
    [
        (0.5, 5.0, False),  # a short lock: the write waits for it
        (2.0, 5.0, False),  # a long lock, still within the busy timeout
        (4.0, 1.0, True),  # past the busy timeout: a typed error, then recovery
    ],
)
@pytest.mark.timeout(60)
def test_another_process_holds_the_write_lock(tmp_path: Path, hold: float, busy: float,
                                              refused: bool) -> None:
    """Within the busy timeout writers wait; past it the caller gets StorageError."""
    path = tmp_path / "q.db"
    db = FaultySqliteDatabase(str(path), busy_timeout=busy)
    sender = RecordingSender()
    ref = start(db, sender)
    enqueuer = Enqueuer(ref)
    assert enqueuer.one()
    holder = hold_lock(path, hold)
    started = time.monotonic()
    result = enqueuer.one()
    waited = time.monotonic() - started
    holder.wait(10)
    assert holder.stdout is not None
    holder.stdout.close()
    if refused:
        assert result is None and "locked" in (ref.ask(GetHealth()).last_error or "")
    else:
        assert result is not None and waited >= hold * 0.5
    assert enqueuer.one() is not None  # the lock is gone: work resumes, no restart
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == len(enqueuer.acked))
    ref.stop()
    enqueuer.check_against(path)


def test_a_stop_while_the_outcome_commits_sends_nothing_more(tmp_path: Path) -> None:
    """The account is stopped while its outcome and the claim of its next message wait for the
    write lock: once that commits, the stop gives the claimed message back; nothing more is sent."""
    path = tmp_path / "postroom.db"
    release = threading.Event()
    sender = RecordingSender(lambda message, _: release.wait(10) and None)
    ref = Supervisor.start(database=f"sqlite:///{path}", sender=sender, rng=FixedRandom(),
                           settings=SupervisorSettings(account=AccountSettings(idle_timeout=None)))
    first, second = ref.ask(EnqueueBatch([Enqueue(phone="+15550001", user_id="42", text=t)
                                          for t in ("first", "second")]))
    eventually(lambda: len(sender.calls) == 1)  # "first" is claimed and in the sender
    holder = hold_lock(path, 1.0)  # its outcome and the claim of "second" will wait for the lock
    release.set()
    time.sleep(0.3)  # the outcome is sent to the writer and waits
    stopping = ref.stop(block=False)
    stopping.get(timeout=30)
    holder.wait(10)
    assert holder.stdout is not None
    holder.stdout.close()
    assert [m.id for m in sender.calls] == [first]
    db = Storage(open_database(f"sqlite:///{path}"))
    try:
        assert db.get(first).status is Status.COMPLETED
        assert db.get(second).status is Status.PENDING  # claimed with the outcome, given back
        assert db.get(second).attempts == 0
    finally:
        db.close()
