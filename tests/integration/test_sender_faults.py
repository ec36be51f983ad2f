"""Senders that misbehave: raise, hang, raise SystemExit/KeyboardInterrupt, kill the process.

Whatever the user's sender does, the message ends in a recorded state, the other
accounts keep sending, and the actor system stays up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.persistence import PersistenceActor
from storage import Storage, open_database
from supervisor import (
    AccountSettings,
    Enqueue,
    EnqueueBatch,
    FakeClock,
    GetHealth,
    GetMessage,
    GetStats,
    Message,
    Status,
    Supervisor,
    SupervisorSettings,
)
from tests.conftest import LogCapture, eventually
from tests.integration.helpers import RecordingSender, account_ref, start, start_with, status_of
from tests.integration.poison_child import BYSTANDER_PLAN, MAX_ATTEMPTS, PLAN

ROOT = Path(__file__).resolve().parents[2]
OTHER_ACCOUNTS = [f"+1555020{n}" for n in range(5)]


def enqueue(ref: Any, phone: str = "+15550001", **kw: Any) -> int:
    kw.setdefault("user_id", "42")
    kw.setdefault("text", "hello")
    return int(ref.ask(Enqueue(phone=phone, **kw)))


def row_where(ref: Any, message_id: int, predicate: Any) -> Message:
    """Wait until the stored row satisfies `predicate`, and return it."""
    def check() -> Message | None:
        message: Message = ref.ask(GetMessage(message_id))
        return message if predicate(message) else None

    return eventually(check)


def enqueue_others(ref: Any, per_account: int) -> list[int]:
    """`per_account` messages on each of OTHER_ACCOUNTS, one batch per account."""
    ids: list[int] = []
    for phone in OTHER_ACCOUNTS:
        ids += ref.ask(EnqueueBatch([Enqueue(phone=phone, user_id="u", text=f"m{i}")
                                     for i in range(per_account)]))
    return ids


def completed(ref: Any, count: int) -> bool:
    return bool(ref.ask(GetStats()).by_status[Status.COMPLETED] >= count)


# -- a sender that raises ----------------------------------------------------------------


def test_plain_exception_is_retried_then_failed_with_its_error(sqlite_url: str) -> None:
    """A sender raising RuntimeError is retried with backoff, then failed at max_attempts with its error."""
    clock = FakeClock()

    def script(message: Message, call: int) -> None:
        raise RuntimeError("upstream exploded (code 17)")

    sender = RecordingSender(script)
    ref = start(sqlite_url, sender, clock=clock)
    mid = enqueue(ref, max_attempts=3)
    first = row_where(ref, mid, lambda m: m.status is Status.RETRYING and m.attempts == 1)
    assert first.last_error == "RuntimeError: upstream exploded (code 17)"
    clock.advance(1)
    row_where(ref, mid, lambda m: m.status is Status.RETRYING and m.attempts == 2)
    clock.advance(2)
    failed = row_where(ref, mid, lambda m: m.status is Status.FAILED)
    assert failed.attempts == 3
    assert failed.last_error == "RuntimeError: upstream exploded (code 17)"
    assert failed.completed_at is not None
    assert sender.ids() == [mid, mid, mid]


# -- a sender that hangs -------------------------------------------------------------------


def test_hung_sender_times_out_and_its_late_return_changes_nothing(sqlite_url: str) -> None:
    """A hung send is recorded `retrying` (SendTimeout); others send meanwhile; its late return is ignored."""
    clock = FakeClock()
    entered, gate, returned = threading.Event(), threading.Event(), threading.Event()

    def script(message: Message, call: int) -> None:
        if message.phone == "+15550001" and call == 1:
            entered.set()
            gate.wait(60)
            returned.set()

    sender = RecordingSender(script)
    ref = start(sqlite_url, sender, clock=clock, send_timeout=0.3)
    hung = enqueue(ref, phone="+15550001", max_attempts=5)
    assert entered.wait(15)
    timed_out = row_where(ref, hung, lambda m: m.status is Status.RETRYING)
    assert timed_out.attempts == 1
    assert (timed_out.last_error or "").startswith("SendTimeout")
    assert timed_out.available_at == clock.now() + timedelta(seconds=1)

    others = enqueue_others(ref, per_account=50)
    eventually(lambda: set(others) <= set(sender.ids()), timeout=60)  # each one handed over
    assert not returned.is_set(), "the hung call must still be stuck while the others sent"

    gate.set()
    assert returned.wait(15)
    account_ref("+15550001").proxy().phone.get()  # a round trip through the account actor
    late = ref.ask(GetMessage(hung))
    assert (late.status, late.attempts, late.last_error) == (
        Status.RETRYING, 1, timed_out.last_error)  # the retry is not due yet: nothing moved

    clock.advance(1)  # (also retries any of the others a loaded machine made time out)
    done = row_where(ref, hung, lambda m: m.status is Status.COMPLETED)
    assert done.attempts == 2
    assert sender.ids("+15550001") == [hung, hung]
    eventually(lambda: completed(ref, len(others) + 1))


def test_hung_sender_without_timeout_blocks_only_its_own_account(sqlite_url: str) -> None:
    """With send_timeout=None a hung sender holds its account while 5 others deliver 50 messages each."""
    entered, gate = threading.Event(), threading.Event()

    def script(message: Message, call: int) -> None:
        if message.phone == "+15550001":
            entered.set()
            gate.wait(60)

    sender = RecordingSender(script)
    ref = start(sqlite_url, sender, send_timeout=None)
    hung = enqueue(ref, phone="+15550001")
    assert entered.wait(15)
    others = enqueue_others(ref, per_account=50)
    eventually(lambda: completed(ref, len(others)), timeout=60)
    assert status_of(ref, hung) is Status.PROCESSING  # still inside the sender
    gate.set()
    done = row_where(ref, hung, lambda m: m.status is Status.COMPLETED)
    assert done.attempts == 1


def hung_pool(sqlite_url: str, bound: int,
              hung_phones: list[str]) -> tuple[Any, RecordingSender, threading.Event]:
    """A supervisor with 2 send threads and a 0.2 s send timeout whose sender never returns for
    `hung_phones` until the event is set; the clock is fake, so their retries never come."""
    never = threading.Event()

    def script(message: Message, call: int) -> None:
        if message.phone in hung_phones:
            never.wait()

    settings = SupervisorSettings(send_threads=2, abandoned_send_threads=bound,
                                  account=replace(AccountSettings(), send_timeout=0.2, idle_timeout=None))
    sender = RecordingSender(script)
    return start_with(sqlite_url, sender, settings, clock=FakeClock()), sender, never


def test_senders_hung_past_their_timeout_never_stop_the_other_accounts(sqlite_url: str) -> None:
    """Senders of 4 accounts that never return keep their threads past `send_timeout`, twice
    `send_threads`: the other accounts still send every message, and `GetHealth` reports the
    abandoned sends (how many, the oldest's age, the bound)."""
    hung_phones = [f"+1555030{n}" for n in range(4)]
    ref, _, never = hung_pool(sqlite_url, 8, hung_phones)
    try:
        hung = [enqueue(ref, phone=phone) for phone in hung_phones]
        eventually(lambda: all(status_of(ref, i) is Status.RETRYING for i in hung))  # each timed out
        others = enqueue_others(ref, per_account=4)
        eventually(lambda: completed(ref, len(others)), timeout=20)
        left = ref.ask(GetHealth()).abandoned_sends
        assert (left.count, left.bound, left.past_bound) == (4, 8, 0)
        assert left.oldest is not None and left.oldest >= 0.2
    finally:
        never.set()
        ref.stop()


def test_hung_senders_past_the_bound_count_against_send_threads_and_say_so(
        sqlite_url: str, logs: LogCapture) -> None:
    """Past `abandoned_send_threads`, hung senders count against `send_threads` again: once they
    fill it nothing else is sent, `GetHealth` shows how many are past the bound, and one
    `pool.abandoned_past_bound` warning says so; when they return, sending resumes."""
    hung_phones = [f"+1555030{n}" for n in range(3)]
    ref, sender, never = hung_pool(sqlite_url, 1, hung_phones)
    try:
        hung = [enqueue(ref, phone=phone) for phone in hung_phones]
        eventually(lambda: all(status_of(ref, i) is Status.RETRYING for i in hung))
        left = ref.ask(GetHealth()).abandoned_sends
        assert (left.count, left.bound, left.past_bound) == (3, 1, 2)
        assert len(logs.events("pool.abandoned_past_bound")) == 1
        other = enqueue(ref, phone=OTHER_ACCOUNTS[0])
        eventually(lambda: status_of(ref, other) is Status.PROCESSING)  # claimed: waits for a thread
        assert ref.proxy().send_pool.get().threads == 3 and other not in sender.ids()
        never.set()
        row_where(ref, other, lambda m: m.status is Status.COMPLETED)
    finally:
        never.set()
        ref.stop()


# -- SystemExit and KeyboardInterrupt ------------------------------------------------------------


@pytest.mark.parametrize("send_timeout", [None, 60.0], ids=["inline", "send-thread"])
@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt()],
                         ids=["SystemExit", "KeyboardInterrupt"])
def test_base_exception_from_sender_is_transient_and_kills_nothing(
        sqlite_url: str, raised: BaseException, send_timeout: float | None) -> None:
    """SystemExit/KeyboardInterrupt from a sender retry the message; no actor stops; later work is sent."""
    clock = FakeClock()

    def script(message: Message, call: int) -> None:
        if message.text == "explodes" and call == 1:
            raise raised

    sender = RecordingSender(script)
    ref = start(sqlite_url, sender, clock=clock, send_timeout=send_timeout)
    mid = enqueue(ref, phone="+15550001", text="explodes", max_attempts=3)
    retrying = row_where(ref, mid, lambda m: m.status is Status.RETRYING)
    assert retrying.attempts == 1
    assert (retrying.last_error or "").startswith(type(raised).__name__)

    alive = {r.actor_urn for r in pykka.ActorRegistry.get_all()}
    assert ref.actor_urn in alive
    assert pykka.ActorRegistry.get_by_class(Supervisor)
    assert pykka.ActorRegistry.get_by_class(PersistenceActor)
    later = [enqueue(ref, phone=p, text="after") for p in ("+15550001", *OTHER_ACCOUNTS)]
    eventually(lambda: all(status_of(ref, i) is Status.COMPLETED for i in later))

    clock.advance(1)
    done = row_where(ref, mid, lambda m: m.status is Status.COMPLETED)
    assert done.attempts == 2
    assert ref.is_alive()


# -- a sender that kills the process ---------------------------------------------------------


def run_poison_child(db_file: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "POSTROOM_CRASH_AT"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "tests.integration.poison_child", str(db_file), *flags],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False)


def run_until_drained(db_file: Path, *flags: str, starts: int = 10) -> int:
    """Restart the child after each death (at most `starts` runs); returns the number of deaths."""
    deaths = 0
    for _ in range(starts):
        child = run_poison_child(db_file, *flags)
        if child.returncode == -signal.SIGKILL:
            deaths += 1
            continue
        assert child.returncode == 0, child.stderr[-3000:]
        assert "DRAINED" in child.stdout
        return deaths
    pytest.fail(f"the child never drained its queue ({deaths} deaths in {starts} starts)")


def stored(db_file: Path, plan: list[tuple[str, str]]) -> dict[str, Message]:
    """The rows of `plan`, by text, read from the file the child left."""
    storage = Storage(open_database(f"sqlite:///{db_file}"))
    try:
        rows = [m for phone in sorted({p for p, _ in plan}) for m in storage.list_messages(phone)]
    finally:
        storage.close()
    assert sorted(m.text for m in rows) == sorted(text for _, text in plan)
    return {m.text: m for m in rows}


@pytest.mark.timeout(300)
def test_poison_message_that_kills_the_process_ends_failed(tmp_path: Path) -> None:
    """A message whose send SIGKILLs the process ends failed (interrupted) within max_attempts deaths."""
    db_file = tmp_path / "poison.db"
    deaths = run_until_drained(db_file)
    rows = stored(db_file, PLAN)
    poison = rows.pop("poison")
    assert 1 <= deaths <= MAX_ATTEMPTS
    assert poison.status is Status.FAILED
    assert "interrupted" in (poison.last_error or "")
    assert poison.attempts == deaths  # every death was one of its attempts
    assert {text: m.status for text, m in rows.items()} == dict.fromkeys(rows, Status.COMPLETED)
    assert all(m.attempts == 1 for m in rows.values())


@pytest.mark.timeout(300)
def test_poison_message_does_not_fail_a_bystander_in_flight(tmp_path: Path) -> None:
    """A message of another account in flight at each poison death is still delivered, not failed."""
    db_file = tmp_path / "bystander.db"
    deaths = run_until_drained(db_file, "--bystander")
    rows = stored(db_file, BYSTANDER_PLAN)
    assert rows["poison"].status is Status.FAILED and 1 <= deaths <= MAX_ATTEMPTS
    assert rows["bystander"].status is Status.COMPLETED, (
        rows["bystander"].attempts, rows["bystander"].last_error)
