"""The crash-point matrix: the process SIGKILLs itself at each named instant, then restarts.

A resend may happen only where the send had happened and was not yet recorded
(`send.after`); everywhere else the restart delivers each message exactly once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor import Broadcast, GetStats, Status
from tests.conftest import eventually
from tests.integration.crash_harness import ROOT, Harness
from tests.integration.helpers import RecordingSender, start

KILLED = -signal.SIGKILL


def rows(db: Path) -> dict[int, tuple[str, int]]:
    conn = sqlite3.connect(db)
    try:
        return {i: (s, a) for i, s, a in conn.execute("SELECT id, status, attempts FROM message_queue")}
    finally:
        conn.close()


def run_matrix(tmp_path: Path, point: str, failure_rate: float = 0.0) -> Harness:
    harness = Harness(tmp_path, messages=60, accounts=3, seed=3, failure_rate=failure_rate,
                      latency_ms=(0, 1))
    assert harness.crash_run(point) == KILLED, f"the child never reached {point}"
    return harness


@pytest.mark.parametrize(
    ("point", "failure_rate"),
    [
        ("enqueue.committed", 0.0),  # committed, not acknowledged: the retry finds it by key
        ("claim.committed", 0.0),  # PROCESSING, never sent: sent once after the restart
        ("send.inside", 0.0),  # the platform never got it: sent once after the restart
        ("send.after", 0.0),  # delivered, not recorded: at-least-once sends it again
        ("record.completed", 0.0),  # recorded: never sent again
        ("record.retry.mid", 0.5),  # the retry's transaction rolled back: a clean retry
    ],
)
@pytest.mark.timeout(120)
def test_crash_point(tmp_path: Path, point: str, failure_rate: float) -> None:
    """After a kill at `point` and a clean restart, nothing is lost and resends happen only after a send.

    Other accounts run concurrently, so the legal resends are exactly the messages that
    were PROCESSING at the kill and already in the delivery ledger.
    """
    harness = run_matrix(tmp_path, point, failure_rate)
    legal = set(harness.run.sent_unrecorded)
    if point == "send.after":
        assert legal, "the message killed after its send must be among the legal resends"
    harness.finish()
    verdict = harness.verdict()
    assert harness.run.drained
    assert sorted(harness.run.acked) == list(range(60))
    assert verdict.lost == [] and verdict.unexpected == [] and verdict.not_final == [], verdict
    assert verdict.duplicated_ids == legal
    assert verdict.duplicates == len(legal)
    assert len(rows(harness.db_path)) == 60  # no row twice, even for a retried enqueue
    assert set(harness.run.integrity) == {"ok"}


@pytest.mark.timeout(120)
def test_crash_during_rehydration_is_the_same_as_one_rehydration(tmp_path: Path) -> None:
    """Killed inside and right after boot recovery, the next boot reaches the state one boot would."""
    harness = run_matrix(tmp_path, "send.after")
    interrupted = {i for i, (s, _) in rows(harness.db_path).items() if s == "processing"}
    assert interrupted
    before = rows(harness.db_path)
    assert harness.crash_run("recover.mid") == KILLED
    assert rows(harness.db_path) == before  # the recovery transaction never committed
    assert harness.crash_run("boot.recovered") == KILLED
    once = rows(harness.db_path)
    for mid in interrupted:
        assert once[mid] == ("retrying", before[mid][1])  # attempt counted once, not per boot
    assert harness.crash_run("boot.recovered") == KILLED
    assert rows(harness.db_path) == once  # a second recovery changes nothing
    harness.finish()
    verdict = harness.verdict()
    assert verdict.lost == [] and verdict.not_final == [], verdict
    assert verdict.duplicated_ids == harness.run.sent_unrecorded


RECIPIENTS = [(f"+1555000{i % 3}", f"u{i}") for i in range(500)]
BROADCAST_CHILD = f"""
from supervisor import Broadcast, Supervisor
import sys
ref = Supervisor.start(database=sys.argv[1], sender=lambda message: None)
ref.ask(Broadcast({RECIPIENTS!r}, text="news", idempotency_key="launch"), timeout=60)
print("ANSWERED", flush=True)
"""


@pytest.mark.timeout(120)
def test_a_broadcast_killed_before_its_answer_is_whole_and_sent_once(tmp_path: Path) -> None:
    """SIGKILL after a broadcast's commit, before its caller hears back: every row is there (one
    transaction); sent again with its key after the restart it writes nothing and answers the
    same ids, and each message is sent once."""
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    env = {**os.environ, "POSTROOM_CRASH_AT": "enqueue.committed", "PYTHONPATH": str(ROOT)}
    child = subprocess.run([sys.executable, "-c", BROADCAST_CHILD, url], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=90, check=False)
    assert child.returncode == KILLED and "ANSWERED" not in child.stdout, child.stderr[-2000:]
    committed = rows(tmp_path / "queue.db")
    assert len(committed) == 500 and {s for s, _ in committed.values()} == {"pending"}

    sender = RecordingSender()
    ref = start(url, sender)
    ids = ref.ask(Broadcast(RECIPIENTS, text="news", idempotency_key="launch"))
    assert ids == sorted(committed)  # the retry found every row by its key
    sender.wait_for(500)
    assert sorted(sender.ids()) == ids  # once each
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == 500)
