"""Fencing: a supervisor that lost its owner lock without noticing writes nothing once
another has taken over, because every write transaction checks the owner row's epoch."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from postroom_common import NewMessage, Priority
from storage import Storage, open_database
from storage.owner import OWNER_LOCK_KEY
from supervisor import Drain, Message, OwnershipLost, Supervisor
from tests.conftest import eventually

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _new(phone: str = "+15550001") -> NewMessage:
    return NewMessage(phone=phone, user_id="7", text="hi", attachment=None, priority=Priority.NORMAL,
                      scheduled_at=None, max_attempts=5, created_at=NOW, idempotency_key=None)


def test_a_write_under_a_former_epoch_changes_nothing(database_url: str) -> None:
    """Once a second storage takes ownership, the first one's next write transaction raises
    OwnershipLost, rolls back what it did, and every later write is refused too."""
    first, second = Storage(open_database(database_url)), Storage(open_database(database_url))
    try:
        first.create_schema()
        assert first.take_ownership("first", NOW) + 1 == second.take_ownership("second", NOW)
        with pytest.raises(OwnershipLost, match="second"), first.write_transaction():
            first.insert([_new()])
        with pytest.raises(OwnershipLost), first.write_transaction():
            pass
        assert second.count_open() == 0
        with second.write_transaction():
            second.insert([_new()])
        assert second.count_open() == 1
    finally:
        first.close_all()
        second.close_all()


def _kill_the_lock_session(url: str) -> int:
    """pg_terminate_backend on the session holding the owner's advisory lock; its pid."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
            " AND ((l.classid::int8 << 32) | l.objid::int8) = %s AND l.objsubid = 1"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (OWNER_LOCK_KEY,)).fetchone()
        assert row is not None, "nobody holds the owner lock"
        conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        return int(row[0])


def _sends(log: Path) -> list[tuple[str, int, int, float]]:
    lines = [line.split() for line in log.read_text().splitlines() if line]
    return [(who, int(i), int(attempt), float(at)) for who, i, attempt, at in lines]


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_killed_lock_connection_never_lets_two_owners_claim_one_message(
        postgres_url: str, tmp_path: Path) -> None:
    """The owner's lock session is ended by the server (as an idle-session killer or a DBA
    would) while it sends; a second supervisor then starts: the first sends nothing it had
    not claimed before the takeover, so the only messages sent by both are those it was
    already sending (one per account at most), and the second sends every message."""
    accounts, messages = 20, 3000
    log = tmp_path / "sends.log"
    log.touch()
    command = [sys.executable, "-m", "tests.integration.fence_child", postgres_url, str(log),
               str(accounts), str(messages)]
    first = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "started"
        eventually(lambda: len(_sends(log)) >= 200, timeout=30)
        _kill_the_lock_session(postgres_url)

        lock = threading.Lock()

        def send(message: Message) -> None:
            with lock, log.open("a") as out:
                out.write(f"B {message.id} {message.attempts} {time.time()}\n")

        second = eventually(lambda: _start_or_none(postgres_url, send), timeout=30)
        taken_over = time.time()
        try:
            assert second.ask(Drain(timeout=60)) == 0
        finally:
            second.stop()
        assert first.poll() is None, "the former owner should still be running, fenced"
    finally:
        first.kill()
        first.wait(timeout=30)
        for pipe in (first.stdin, first.stdout):
            if pipe is not None:
                pipe.close()

    sends = _sends(log)
    by_first = {i: at for who, i, _, at in sends if who == "A"}
    by_second = {i for who, i, _, _ in sends if who == "B"}
    assert set(by_first) | by_second == set(range(min(by_second | set(by_first)),
                                                  max(by_second | set(by_first)) + 1))
    late = [i for i, at in by_first.items() if at > taken_over + 0.5]
    assert late == [], f"the former owner began {len(late)} sends after the takeover"
    both = set(by_first) & by_second
    assert len(both) <= accounts, f"{len(both)} messages sent by both owners"


def _start_or_none(url: str, send: object) -> object:
    from supervisor import DatabaseLocked

    try:
        return Supervisor.start(database=url, sender=send)
    except DatabaseLocked:
        return None
