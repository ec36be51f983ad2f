"""A failure of postroom's own code strands no message in `processing` until the next boot.

Faults are planted in each step of an account's cycle (`actors._faults.arm_fault`): the
account crashes there, gives back what it held, and the supervisor restarts it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from actors._faults import arm_fault, disarm_faults
from storage import Storage, open_database
from supervisor import (
    AccountSettings,
    Enqueue,
    GetHealth,
    GetMessage,
    GetStats,
    ResumeAccount,
    Status,
    SupervisorSettings,
)
from tests.conftest import LogCapture, eventually
from tests.integration.helpers import RecordingSender, start, start_with

PHONE = "+15550001"


@pytest.fixture(autouse=True)
def _no_fault_left() -> Iterator[None]:
    yield
    disarm_faults()


def _processing(url: str) -> int:
    store = Storage(open_database(url))
    try:
        return store.stats().by_status[Status.PROCESSING]
    finally:
        store.close()


@pytest.mark.parametrize("point", [
    "account.read",  # the window read came back: read again after the restart
    "account.claiming",  # the claim never reached the writer: nothing committed, claimed later
    "account.claimed",  # claimed and its send started: the send's end is still recorded
    "account.send_ended",  # the sender returned: recorded as delivered, not sent again
    "account.recording",  # the outcome never reached the writer: written by the release
    "account.recorded",  # recorded, and the next message claimed with it: its send recorded
])
def test_a_crash_at_any_step_strands_nothing_and_sends_each_message_once(
        sqlite_url: str, logs: LogCapture, point: str) -> None:
    """The account crashes once at `point`: every message is still sent exactly once, in
    order, each with one attempt counted, and the account is restarted."""
    sender = RecordingSender()
    ref = start(sqlite_url, sender)
    arm_fault(point)
    ids = [ref.ask(Enqueue(phone=PHONE, user_id="u", text=str(i))) for i in range(3)]
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == 3)
    assert sender.ids() == ids
    assert [ref.ask(GetMessage(i)).attempts for i in ids] == [1, 1, 1]
    assert len(logs.events("account.crashed")) == 1 and logs.events("account.restarted")
    assert _processing(sqlite_url) == 0


def test_a_parked_account_holds_nothing_in_processing(sqlite_url: str, logs: LogCapture) -> None:
    """An account that keeps crashing before each claim is parked with its messages pending,
    no attempt counted; ResumeAccount sends each once."""
    sender = RecordingSender()
    ref = start(sqlite_url, sender)
    arm_fault("account.claiming", times=4)  # max_restarts (3) + 1 crashes park it
    ids = [ref.ask(Enqueue(phone=PHONE, user_id="u", text=str(i))) for i in range(2)]
    eventually(lambda: ref.ask(GetHealth()).parked_accounts)
    assert _processing(sqlite_url) == 0
    assert [(m.status, m.attempts) for m in (ref.ask(GetMessage(i)) for i in ids)] == [
        (Status.PENDING, 0), (Status.PENDING, 0)]
    assert sender.calls == []
    assert ref.ask(ResumeAccount(PHONE)) is True
    eventually(lambda: sender.ids() == ids)


def test_a_thread_that_cannot_start_defers_the_send(sqlite_url: str, logs: LogCapture) -> None:
    """When no thread can be started for a send (a process limit), the send waits and goes
    later with the same attempt: no crash, no parked account, nothing charged twice."""
    sender = RecordingSender()
    settings = SupervisorSettings(account=AccountSettings(storage_retry=0.05, idle_timeout=None))
    ref = start_with(sqlite_url, sender, settings)
    arm_fault("pool.start_thread.postroom-send", times=3)
    message_id = ref.ask(Enqueue(phone=PHONE, user_id="u", text="hi"))
    eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.COMPLETED)
    assert ref.ask(GetMessage(message_id)).attempts == 1 and sender.ids() == [message_id]
    assert len(logs.events("account.send_deferred")) == 3
    assert not logs.events("account.crashed") and ref.ask(GetHealth()).parked_accounts == ()


def test_sends_past_the_thread_cap_wait_without_timing_out(sqlite_url: str) -> None:
    """With two send threads and ten accounts, at most two sends run at once; sends waiting
    for a thread longer than the send timeout are not timed out: each goes once."""
    running, most = [0], [0]
    lock = threading.Lock()

    def slow(message: object, call: int) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.15)
        with lock:
            running[0] -= 1

    sender = RecordingSender(slow)
    settings = SupervisorSettings(send_threads=2,
                                  account=AccountSettings(send_timeout=0.3, idle_timeout=None))
    ref = start_with(sqlite_url, sender, settings)
    ids = [ref.ask(Enqueue(phone=f"+1555000{i}", user_id="u", text="hi")) for i in range(10)]
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == 10, timeout=30)
    assert most[0] == 2
    assert sorted(sender.ids()) == sorted(ids)
    assert all(ref.ask(GetMessage(i)).attempts == 1 for i in ids)


def test_a_stop_with_a_hung_sender_returns_and_health_names_it(sqlite_url: str) -> None:
    """With no send timeout, a sender that never returns is named in GetHealth().slow_sends,
    and stop returns after stop_timeout: the message stays processing, and the next start
    sends it again (at-least-once)."""
    hang = threading.Event()
    sender = RecordingSender(lambda m, n: hang.wait(60) and None if n == 1 else None)
    settings = SupervisorSettings(slow_send_after=0.1, stop_timeout=0.5,
                                  account=AccountSettings(send_timeout=None, idle_timeout=None))
    ref = start_with(sqlite_url, sender, settings)
    message_id = ref.ask(Enqueue(phone=PHONE, user_id="u", text="hi"))
    sender.wait_for(1)
    slow = eventually(lambda: ref.ask(GetHealth()).slow_sends)
    assert len(slow) == 1 and slow[0].startswith("+15") and PHONE not in slow[0]
    began = time.monotonic()
    ref.stop(timeout=30)
    assert time.monotonic() - began < 10
    try:
        assert _processing(sqlite_url) == 1
        again = start(sqlite_url, sender)
        eventually(lambda: again.ask(GetMessage(message_id)).status is Status.COMPLETED)
        assert sender.ids() == [message_id, message_id]
        again.stop()
    finally:
        hang.set()


def test_a_stop_logs_one_line_for_every_send_still_waiting_for_a_thread(
        sqlite_url: str, logs: LogCapture) -> None:
    """A stop that calls off sends still waiting for a thread (behind a hung sender) logs one
    `supervisor.sends_deferred` warning, with their count and a few masked accounts, instead
    of a warning per account; their messages are given back, attempts uncounted."""
    hang = threading.Event()
    sender = RecordingSender(lambda m, n: hang.wait(60) and None if m.phone == PHONE else None)
    settings = SupervisorSettings(send_threads=1, stop_timeout=0.5,
                                  account=AccountSettings(send_timeout=None, idle_timeout=None))
    ref = start_with(sqlite_url, sender, settings)
    ref.ask(Enqueue(phone=PHONE, user_id="u", text="hi"))
    sender.wait_for(1)
    waiting = [ref.ask(Enqueue(phone=f"+1555002{n:02d}", user_id="u", text="hi")) for n in range(12)]
    eventually(lambda: all(ref.ask(GetMessage(i)).status is Status.PROCESSING for i in waiting))
    try:
        ref.stop(timeout=30)
        [summary] = logs.events("supervisor.sends_deferred")
        assert summary["log_level"] == "warning" and summary["sends"] == 12
        masked = summary["accounts"]
        assert len(masked) == 5 and all(a.startswith("+15") and "~" in a for a in masked)
        assert not [e for e in logs.events("account.send_deferred") if e["log_level"] == "warning"]
        store = Storage(open_database(sqlite_url))
        try:
            assert {(store.get(i).status, store.get(i).attempts) for i in waiting} == {(Status.PENDING, 0)}
        finally:
            store.close()
    finally:
        hang.set()
