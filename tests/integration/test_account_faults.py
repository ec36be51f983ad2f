"""A failure of postroom's own code strands no message in `processing` until the next boot.

Faults are planted in each step of an account's cycle (`actors._faults.arm_fault`): the
account crashes there, gives back what it held, and the supervisor restarts it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors._faults import arm_fault, disarm_faults
from actors.account import AccountActor
from postroom_common import Message
from storage import Storage, open_database
from supervisor import (
    AccountSettings,
    Drain,
    Enqueue,
    EnqueueBatch,
    GetHealth,
    GetMessage,
    GetStats,
    ResumeAccount,
    Status,
    SupervisorSettings,
)
from tests.conftest import LogCapture, eventually
from tests.integration.helpers import RecordingSender, account_ref, start, start_with

PHONE = "+15550001"
#: Accounts that crash in one instant.
CROWD = [f"+1556{n:07d}" for n in range(64)]
BYSTANDER = "+15570000001"


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


def _held_at(gate: threading.Event) -> RecordingSender:
    """A sender whose sends for the crowd wait at `gate`; the others return at once."""
    crowd = set(CROWD)

    def hold(message: Message, call: int) -> None:
        if message.phone in crowd:
            gate.wait(60)

    return RecordingSender(hold)


def _crowd_sending(sqlite_url: str, threads: int, gate: threading.Event,
                   sender: RecordingSender) -> tuple[pykka.ActorRef[Any], list[int]]:
    """A supervisor whose 64 crowd accounts each have a send under way, held at `gate`."""
    settings = SupervisorSettings(account_threads=threads, account=AccountSettings(idle_timeout=None))
    ref = start_with(sqlite_url, sender, settings)
    ids = ref.ask(EnqueueBatch([Enqueue(phone=phone, user_id="u", text="hi") for phone in CROWD]))
    sender.wait_for(len(CROWD))
    return ref, ids


def _drained_in(ref: pykka.ActorRef[Any], began: float) -> tuple[int | None, float]:
    """Open messages left by a `Drain`, and seconds since `began`; None if not even answered."""
    try:
        left: int | None = ref.ask(Drain(timeout=20), timeout=40)
    except pykka.Timeout:  # the supervisor's own turn could not run: frozen too
        left = None
    return left, time.monotonic() - began


def _each_sent_once(ref: pykka.ActorRef[Any], sender: RecordingSender, ids: list[int]) -> None:
    assert sorted(i for i in sender.ids() if i in set(ids)) == sorted(ids)
    assert {(m.status, m.attempts) for m in (ref.ask(GetMessage(i)) for i in ids)} == {(Status.COMPLETED, 1)}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("threads", [8, 2])
def test_accounts_crashing_while_sending_freeze_neither_the_writer_nor_the_others(
        sqlite_url: str, logs: LogCapture, threads: int) -> None:
    """64 account actors crash in one instant while their sends are under way: another account
    still sends meanwhile, and once those sends end their outcomes are recorded (each message
    sent once), the 64 are restarted and the queue drains within seconds: a crashed account
    gives back what it held by mail, holding no thread of the runtime while it waits."""
    gate = threading.Event()
    sender = _held_at(gate)
    ref, ids = _crowd_sending(sqlite_url, threads, gate, sender)
    crashed = pykka.ActorRegistry.get_by_class(AccountActor)
    for account in crashed:
        account.tell("boom")  # an unknown message: the actor raises
    began = time.monotonic()
    try:
        other = ref.ask(Enqueue(phone=BYSTANDER, user_id="u", text="hi"), timeout=10)
        eventually(lambda: other in sender.ids(BYSTANDER), timeout=10)
    finally:
        gate.set()
    left, took = _drained_in(ref, began)
    assert len(crashed) == len(CROWD) and left == 0 and took < 10, f"drained in {took:.1f} s, {left} left"
    assert len(logs.events("account.crashed")) == len(CROWD)
    _each_sent_once(ref, sender, ids)
    eventually(lambda: len(logs.events("account.restarted")) == len(CROWD))
    assert _processing(sqlite_url) == 0


@pytest.mark.timeout(180)
@pytest.mark.parametrize("threads", [8, 2])
def test_accounts_crashing_as_their_sends_end_freeze_nothing(
        sqlite_url: str, logs: LogCapture, threads: int) -> None:
    """64 accounts crash in one instant, each as it takes in the end of its send: every
    outcome is still recorded once, each account is restarted, and the queue drains within
    seconds."""
    gate = threading.Event()
    sender = _held_at(gate)
    ref, ids = _crowd_sending(sqlite_url, threads, gate, sender)
    arm_fault("account.send_ended", times=len(CROWD))
    began = time.monotonic()
    gate.set()
    left, took = _drained_in(ref, began)
    assert left == 0 and took < 10, f"drained in {took:.1f} s, {left} left"
    assert len(logs.events("account.crashed")) == len(CROWD)
    _each_sent_once(ref, sender, ids)
    eventually(lambda: len(logs.events("account.restarted")) == len(CROWD))
    assert _processing(sqlite_url) == 0


def test_a_stop_waits_for_a_crashed_account_to_give_back_its_send(sqlite_url: str, logs: LogCapture) -> None:
    """A stop begun while a crashed account waits for the end of its send waits for it too:
    the outcome is recorded and nothing is left processing."""
    gate = threading.Event()
    sender = RecordingSender(lambda m, n: gate.wait(30) and None)
    ref = start(sqlite_url, sender)
    message_id = ref.ask(Enqueue(phone=PHONE, user_id="u", text="hi"))
    sender.wait_for(1)
    account_ref(PHONE).tell("boom")
    eventually(lambda: logs.events("account.crashed"))
    stopping = threading.Thread(target=ref.stop, kwargs={"timeout": 30})
    stopping.start()
    eventually(lambda: not ref.is_alive())  # the stop has begun: it waits for the accounts
    gate.set()
    stopping.join(30)
    assert not logs.events("account.restarted")
    assert _processing(sqlite_url) == 0
    again = start(sqlite_url, sender)
    assert again.ask(GetMessage(message_id)).status is Status.COMPLETED and sender.ids() == [message_id]


def test_a_crashed_account_whose_send_hangs_gives_up_and_is_restarted(
        sqlite_url: str, logs: LogCapture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crashed account whose send never ends gives up after its wait: it is restarted, and
    the message it left processing is sent again (at-least-once)."""
    monkeypatch.setattr(AccountActor, "RELEASE_WAIT", 0.2)
    hang = threading.Event()
    sender = RecordingSender(lambda m, n: n == 1 and hang.wait(30) and None)
    ref = start(sqlite_url, sender, send_timeout=None)
    try:
        message_id = ref.ask(Enqueue(phone=PHONE, user_id="u", text="hi"))
        sender.wait_for(1)
        account_ref(PHONE).tell("boom")
        eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.COMPLETED)
        assert sender.ids() == [message_id, message_id]
        assert logs.events("account.release_incomplete") and logs.events("account.restarted")
    finally:
        hang.set()


def test_an_account_stopped_by_pykka_alone_waits_for_nothing(sqlite_url: str, logs: LogCapture) -> None:
    """An account actor stopped without `Release` (every actor stopped at once) waits for no
    mail in its stop: it stops at once, its send in flight left for acquiring to settle."""
    gate = threading.Event()
    sender = RecordingSender(lambda m, n: gate.wait(30) and None)
    ref = start(sqlite_url, sender)
    try:
        ref.ask(Enqueue(phone=PHONE, user_id="u", text="hi"))
        sender.wait_for(1)
        began = time.monotonic()
        account_ref(PHONE).stop(timeout=10)
        assert time.monotonic() - began < 5
        assert logs.events("account.release_incomplete")
        assert eventually(lambda: ref.ask(GetHealth()).accounts_running == 0)
    finally:
        gate.set()
