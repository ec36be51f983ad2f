"""Pauses lifted by another process reach their account; disabled accounts are reported."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from actors.errors import AccountSuspended
from actors.privacy import mask_phone
from postroom_common import AccountPause
from storage import Storage, open_database
from supervisor import Enqueue, FakeClock, GetHealth, GetMessage, Health, Message, ResumeAccount, Status
from tests.conftest import LogCapture, eventually
from tests.integration.helpers import RecordingSender, start


def _ban(message: Message, call: int) -> None:
    if message.text == "banned":
        raise AccountSuspended("session revoked")


def _always_banned(message: Message, call: int) -> None:
    raise AccountSuspended("banned")


def _lift_elsewhere(url: str, phone: str) -> None:
    """`postroom resume`, run as another process beside the supervisor."""
    done = subprocess.run([sys.executable, "-m", "postroom_cli", "resume", phone, "--database", url],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def _advance_until(clock: FakeClock, seconds: float, check: object) -> None:
    """Move time on by `seconds` at a time until `check()` holds (the actors react on their
    own threads, a moment after each step)."""
    for _ in range(20):
        clock.advance(seconds)
        with contextlib.suppress(AssertionError):
            eventually(check, timeout=1)  # type: ignore[arg-type]
            return
    raise AssertionError("condition not met")


def test_a_disabled_account_is_reported_once_a_minute(sqlite_url: str, logs: LogCapture) -> None:
    """An account disabled until lifted is named (masked) in a warning with how to lift it, at
    the next check and then once a minute, not at every check."""
    clock = FakeClock()
    ref = start(sqlite_url, RecordingSender(_ban), clock=clock)
    ref.ask(Enqueue(phone="+15550001234", user_id="u", text="banned"))
    _advance_until(clock, 5, lambda: logs.events("accounts.disabled"))
    first = logs.events("accounts.disabled")
    assert len(first) == 1 and first[0]["log_level"] == "warning" and first[0]["count"] == 1
    assert first[0]["accounts"][0].startswith("+15") and "+15550001234" not in repr(first)
    assert "postroom resume" in first[0]["lift"]
    for _ in range(11):
        clock.advance(5)  # 55 s of checks: no second line yet
        ref.ask(GetHealth())
    eventually(lambda: ref.ask(GetHealth()) and len(logs.events("accounts.disabled")) == 1)
    _advance_until(clock, 5, lambda: len(logs.events("accounts.disabled")) == 2)


def _disabled_health(ref: object) -> Health:
    """The supervisor's health once it names a disabled account."""
    return eventually(lambda: (health := ref.ask(GetHealth())).disabled_accounts and health)  # type: ignore[attr-defined]


def test_a_disabled_account_makes_health_degraded_until_lifted(sqlite_url: str) -> None:
    """An account whose sender raised AccountSuspended without a duration makes GetHealth
    degraded, naming it masked and with no database error; so does its row (paused_until NULL)
    after a restart; ResumeAccount clears it at once."""
    phone = "+15550001234"
    first = start(sqlite_url, RecordingSender(_always_banned))
    stuck = first.ask(Enqueue(phone=phone, user_id="u", text="hi"))
    health = _disabled_health(first)
    assert health.degraded and health.disabled_accounts == (mask_phone(phone),)
    assert health.last_error is None  # not a database fault
    first.stop()
    store = Storage(open_database(sqlite_url))
    assert store.pauses(datetime.now(UTC)) == [AccountPause(phone, None, "AccountSuspended")]
    store.close()

    sender = RecordingSender()
    second = start(sqlite_url, sender)
    health = _disabled_health(second)  # read from the database at boot
    assert health.degraded and health.disabled_accounts == (mask_phone(phone),)
    assert second.ask(ResumeAccount(phone)) is True
    health = second.ask(GetHealth())
    assert not health.degraded and health.disabled_accounts == ()
    eventually(lambda: second.ask(GetMessage(stuck)).status is Status.COMPLETED)


@pytest.mark.parametrize("idle_timeout", [None, 5.0], ids=["running", "stopped-while-idle"])
def test_a_pause_lifted_by_another_process_is_noticed(sqlite_url: str, idle_timeout: float | None) -> None:
    """A disabled account whose pause row another process deleted sends its messages after the
    next check, whether its actor still runs or stopped while idle."""
    clock = FakeClock()
    sender = RecordingSender(lambda m, n: _ban(m, n) if n == 1 else None)
    ref = start(sqlite_url, sender, clock=clock, idle_timeout=idle_timeout)
    stuck = ref.ask(Enqueue(phone="+15550001", user_id="u", text="banned"))
    eventually(lambda: len(sender.calls) == 1 and ref.ask(GetMessage(stuck)).status is Status.PENDING)
    if idle_timeout is not None:
        _advance_until(clock, idle_timeout + 1, lambda: ref.ask(GetHealth()).accounts_running == 0)
    clock.advance(3600)
    assert len(sender.calls) == 1  # disabled: an hour changes nothing
    _lift_elsewhere(sqlite_url, "+15550001")
    _advance_until(clock, 5, lambda: ref.ask(GetMessage(stuck)).status is Status.COMPLETED)
    assert sender.ids() == [stuck, stuck]


def test_resume_account_waits_in_no_turn_of_the_supervisor(sqlite_url: str) -> None:
    """While the writer cannot lift a pause (another process holds the SQLite write lock), the
    supervisor goes on answering other commands; ResumeAccount answers once the lock is gone."""
    import sqlite3

    from storage.database import sqlite_path

    ref = start(sqlite_url, RecordingSender())
    holder = sqlite3.connect(sqlite_path(sqlite_url).absolute(), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        resumed = ref.ask(ResumeAccount("+15550001"), block=False)
        assert isinstance(ref.ask(GetHealth(), timeout=2), Health)  # not stuck behind the resume
        holder.execute("ROLLBACK")
        assert resumed.get(timeout=10) is False  # there was no pause to lift
    finally:
        holder.close()
        ref.stop()
