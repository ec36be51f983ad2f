"""The supervisor end to end on a real SQLite file: commands, order, retries, restarts."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pykka
import pytest

from actors.errors import PermanentError, RateLimited, TransientError
from actors.privacy import mask_phone
from actors.retry import BackoffPolicy
from storage import Storage, open_database
from supervisor import (
    AccountSettings,
    Broadcast,
    CancelMessage,
    CleanupNow,
    Enqueue,
    EnqueueBatch,
    FakeClock,
    GetHealth,
    GetMessage,
    GetStats,
    IdempotencyConflict,
    InvalidTransition,
    ListMessages,
    Message,
    Priority,
    RequeueMessage,
    ResumeAccount,
    Status,
    StorageError,
    Supervisor,
    SupervisorSettings,
    ValidationError,
)
from tests.conftest import LogCapture, eventually
from tests.integration.helpers import (
    RecordingSender,
    account_ref,
    start,
    start_with,
    status_of,
)


def enqueue(ref: Any, phone: str = "+15550001", **kw: Any) -> int:
    kw.setdefault("user_id", "42")
    kw.setdefault("text", "hello")
    return int(ref.ask(Enqueue(phone=phone, **kw)))


def final(ref: Any, ids: list[int]) -> bool:
    return all(status_of(ref, i) in (Status.COMPLETED, Status.FAILED) for i in ids)


def test_enqueue_from_eight_threads_is_durable(sqlite_url: str) -> None:
    """8 threads enqueue at once: every id is unique, every row committed and delivered."""
    sender = RecordingSender()
    ref = start(sqlite_url, sender)
    ids: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        mine = [enqueue(ref, phone=f"+1555{n % 3}", text=f"{n}-{i}") for i in range(150)]
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1200
    sender.wait_for(1200)
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == 1200)
    ref.stop()
    storage = Storage(open_database(sqlite_url))
    assert storage.stats().by_status[Status.COMPLETED] == 1200
    assert sorted(sender.ids()) == sorted(ids)  # each sent exactly once


@pytest.mark.parametrize("sender", [None, "send", 42], ids=["None", "str", "int"])
def test_a_sender_that_cannot_be_called_is_refused_before_the_database_is_opened(
        database_url: str, tmp_path: Any, sender: Any) -> None:
    """`Supervisor.start` refuses a non-callable sender with ValidationError before it opens or
    locks anything: no SQLite file is created, and a start right after owns the database."""
    with pytest.raises(ValidationError, match="sender must be a callable"):
        Supervisor.start(database=database_url, sender=sender)
    assert not (tmp_path / "postroom.db").exists()
    ref = Supervisor.start(database=database_url, sender=RecordingSender())
    ref.stop()


def test_priority_and_fifo_per_account(sqlite_url: str) -> None:
    """While the account is busy, queued HIGH goes before NORMAL before LOW, FIFO within each."""
    gate = threading.Event()
    sender = RecordingSender(lambda m, n: gate.wait(10) if m.text == "first" else None)
    ref = start(sqlite_url, sender)
    first = enqueue(ref, text="first")
    sender.wait_for(1)  # the account is now inside the sender
    plan = [Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.LOW, Priority.HIGH,
            Priority.NORMAL]
    ids = [enqueue(ref, priority=p) for p in plan]
    gate.set()
    sender.wait_for(7)
    by_priority = sorted(zip(plan, ids, strict=True), key=lambda pair: (pair[0], pair[1]))
    assert sender.ids() == [first] + [i for _, i in by_priority]


def test_scheduled_message_waits_for_its_time(sqlite_url: str) -> None:
    """A scheduled message is not sent before its time, and is sent when it falls due."""
    clock = FakeClock()
    sender = RecordingSender()
    ref = start(sqlite_url, sender, clock=clock)
    later = enqueue(ref, scheduled_at=clock.now() + timedelta(minutes=10))
    clock.advance(599)
    # Same priority, younger: if `later` were due it would be sent first.
    probe = enqueue(ref)
    assert sender.wait_for(1) == [probe]
    clock.advance(1)
    assert sender.wait_for(2) == [probe, later]


def test_transient_failures_back_off_then_succeed(sqlite_url: str) -> None:
    """Transient errors are retried after 1 s then 2 s (no jitter); the row records each step."""
    clock = FakeClock()

    def flaky(message: Message, call: int) -> None:
        if call <= 2:
            raise TransientError("try again")

    sender = RecordingSender(flaky)
    ref = start(sqlite_url, sender, clock=clock)
    mid = enqueue(ref, max_attempts=5)
    sender.wait_for(1)
    retrying = eventually(lambda: (m := ref.ask(GetMessage(mid))).status is Status.RETRYING and m)
    assert retrying.available_at == clock.now() + timedelta(seconds=1)
    assert retrying.last_error == "TransientError: try again"
    clock.advance(1)
    sender.wait_for(2)
    eventually(lambda: ref.ask(GetMessage(mid)).attempts == 2
               and status_of(ref, mid) is Status.RETRYING)
    clock.advance(2)
    sender.wait_for(3)
    done = eventually(lambda: (m := ref.ask(GetMessage(mid))).status is Status.COMPLETED and m)
    assert done.attempts == 3


def test_attempts_exhausted_and_permanent_errors_fail(sqlite_url: str) -> None:
    """PermanentError fails at once; transient errors fail when max_attempts is reached."""
    clock = FakeClock()

    def script(message: Message, call: int) -> None:
        raise PermanentError("blocked") if message.text == "perm" else RuntimeError("flaky")


    sender = RecordingSender(script)
    ref = start(sqlite_url, sender, clock=clock)
    perm = enqueue(ref, text="perm", max_attempts=5)
    flaky = enqueue(ref, phone="+15550002", text="some text", max_attempts=2)
    eventually(lambda: status_of(ref, perm) is Status.FAILED)
    eventually(lambda: status_of(ref, flaky) is Status.RETRYING)
    clock.advance(5)
    eventually(lambda: status_of(ref, flaky) is Status.FAILED)
    assert ref.ask(GetMessage(perm)).attempts == 1
    assert ref.ask(GetMessage(flaky)).last_error == "RuntimeError: flaky"
    assert len(sender.ids("+15550002")) == 2


def test_rate_limit_pauses_the_account_without_counting(sqlite_url: str) -> None:
    """RateLimited pauses the whole account for retry_after; the attempt is given back."""
    clock = FakeClock()

    def script(message: Message, call: int) -> None:
        if message.text == "a" and call == 1:
            raise RateLimited(retry_after=30)

    sender = RecordingSender(script)
    ref = start(sqlite_url, sender, clock=clock)
    a = enqueue(ref, text="a", max_attempts=1)
    sender.wait_for(1)
    eventually(lambda: ref.ask(GetMessage(a)).status is Status.PENDING)
    b = enqueue(ref, text="b")
    other = enqueue(ref, phone="+15550009", text="other")
    eventually(lambda: other in sender.ids())  # another account is not paused
    clock.advance(29)
    probe = enqueue(ref, phone="+15550009", text="probe")
    eventually(lambda: probe in sender.ids())
    assert sender.ids("+15550001") == [a]  # still paused
    clock.advance(1)
    eventually(lambda: sender.ids("+15550001") == [a, a, b])
    done = eventually(lambda: (m := ref.ask(GetMessage(a))).status is Status.COMPLETED and m)
    assert done.attempts == 1  # the rate-limited attempt did not count (max_attempts=1)


def test_cancel_and_requeue_commands(sqlite_url: str) -> None:
    """Cancel removes a queued message; requeue gives a failed one a new life."""
    clock = FakeClock()
    sender = RecordingSender(lambda m, n: (_ for _ in ()).throw(PermanentError("no"))
                             if m.text == "bad" and n == 1 else None)
    ref = start(sqlite_url, sender, clock=clock)
    later = enqueue(ref, scheduled_at=clock.now() + timedelta(hours=1))
    cancelled = ref.ask(CancelMessage(later))
    assert cancelled.status is Status.CANCELLED
    with pytest.raises(InvalidTransition):
        ref.ask(CancelMessage(later))
    bad = enqueue(ref, text="bad")
    eventually(lambda: status_of(ref, bad) is Status.FAILED)
    assert ref.ask(RequeueMessage(bad)).status is Status.PENDING
    eventually(lambda: status_of(ref, bad) is Status.COMPLETED)
    clock.advance(3600)
    listed = ref.ask(ListMessages("+15550001"))
    assert [m.id for m in listed] == [later, bad]
    assert sender.ids() == [bad, bad]


def test_invalid_commands_write_nothing(sqlite_url: str) -> None:
    """Invalid input is refused with ValidationError at the door and no row is written."""
    ref = start(sqlite_url, RecordingSender())
    with pytest.raises(ValidationError):
        ref.ask(Enqueue(phone="", user_id="1", text="x"))
    with pytest.raises(ValidationError):
        ref.ask(EnqueueBatch([Enqueue(phone="+1", user_id="1", text="ok"),
                              Enqueue(phone="+1", user_id="1", text="")]))
    with pytest.raises(ValidationError):
        ref.ask("not a command")
    assert ref.ask(GetStats()).total == 0


def test_idempotency_key_through_the_supervisor(sqlite_url: str) -> None:
    """A repeated key answers the first id and sends once; another payload is refused."""
    sender = RecordingSender()
    ref = start(sqlite_url, sender)
    first = enqueue(ref, idempotency_key="order-1")
    assert enqueue(ref, idempotency_key="order-1") == first
    with pytest.raises(IdempotencyConflict):
        enqueue(ref, idempotency_key="order-1", text="different")
    eventually(lambda: status_of(ref, first) is Status.COMPLETED)
    assert ref.ask(GetStats()).total == 1 and sender.ids() == [first]


def test_a_batch_with_a_conflicting_key_is_refused_whole(sqlite_url: str, logs: LogCapture) -> None:
    """One message of an EnqueueBatch whose key was used for another message refuses the batch:
    asked, the error names its position; told, a log line does; nothing of it is written."""
    sender = RecordingSender()
    ref = start(sqlite_url, sender)
    first = enqueue(ref, idempotency_key="order-1")
    batch = EnqueueBatch([Enqueue(phone="+1", user_id="u", text="a"),
                          Enqueue(phone="+1", user_id="u", text="b", idempotency_key="fresh"),
                          Enqueue(phone="+2", user_id="u", text="other", idempotency_key="order-1")])
    with pytest.raises(IdempotencyConflict, match=r"^message 2: .*nothing of the batch was written"):
        ref.ask(batch)
    ref.tell(batch)
    ref.tell(Enqueue(phone="+2", user_id="u", text="other", idempotency_key="order-1"))
    refused = eventually(lambda: len(logs.events("command.refused")) == 2 and logs.events("command.refused"))
    assert [(e["command"], e["error"]) for e in refused] == [
        ("EnqueueBatch", "IdempotencyConflict"), ("Enqueue", "IdempotencyConflict")]
    assert refused[0]["reason"].startswith("message 2: ")
    sender.wait_for(1)
    assert ref.ask(GetStats()).total == 1 and sender.ids() == [first]


def test_batch_enqueue_answers_ids_in_order(sqlite_url: str) -> None:
    """EnqueueBatch commits all messages at once and answers their ids in order."""
    sender = RecordingSender()
    ref = start(sqlite_url, sender)
    ids = ref.ask(EnqueueBatch([Enqueue(phone=f"+1{i % 4}", user_id="u", text=str(i))
                                for i in range(100)]))
    assert ids == sorted(ids) and len(set(ids)) == 100
    sender.wait_for(100)


@pytest.mark.parametrize("told", ["batch", "broadcast"])
def test_an_enqueue_never_overtakes_the_enqueue_told_before_it(sqlite_url: str, told: str) -> None:
    """A single enqueue skips the supervisor's thread (actors/door.py), but not the line: told
    right after a big batch, it is written after the batch (the supervisor spends tens of ms
    checking the batch, time enough to overtake it)."""
    phone, size = "+15550001", 20_000
    ahead = datetime.now(UTC) + timedelta(days=1)  # nobody sends: only ids count
    ref = start(sqlite_url, RecordingSender())
    if told == "batch":
        ref.tell(EnqueueBatch([Enqueue(phone=phone, user_id=str(i), text="b", scheduled_at=ahead)
                               for i in range(size)]))
    else:
        ref.tell(Broadcast([(phone, str(i)) for i in range(size)], text="b", scheduled_at=ahead))
    last = enqueue(ref, phone, text="last", scheduled_at=ahead)
    eventually(lambda: ref.ask(GetStats()).by_status[Status.PENDING] == size + 1)
    assert ref.ask(ListMessages(phone, after_id=last)) == []  # no row of the batch after it
    assert ref.ask(GetMessage(last)).text == "last"


def test_broadcast_commits_once_and_each_account_sends_its_share_in_order(
        sqlite_url: str, logs: LogCapture) -> None:
    """A Broadcast answers one id per recipient in order; every account sends its share in id
    order; the batch is one log line, without the text or a phone."""
    sender = RecordingSender()
    ref = start(sqlite_url, sender)
    recipients = [(f"+1555000{i % 3}", f"user-{i}") for i in range(90)]
    ids = ref.ask(Broadcast(recipients, text="secret news", priority=Priority.LOW))
    assert ids == sorted(ids) and len(set(ids)) == 90
    sender.wait_for(90)
    for phone in {p for p, _ in recipients}:
        mine = [i for i, (p, _) in zip(ids, recipients, strict=True) if p == phone]
        assert sender.ids(phone) == mine
    sent = ref.ask(GetMessage(ids[7]))
    assert (sent.phone, sent.user_id, sent.text, sent.priority) == (
        "+15550001", "user-7", "secret news", Priority.LOW)
    lines = [e for e in logs.entries if e["event"] == "messages.enqueued"]
    assert [(e["count"], e["first_id"], e["last_id"]) for e in lines] == [(90, ids[0], ids[-1])]
    assert "secret news" not in repr(logs.entries) and "+15550001" not in repr(logs.entries)


def test_broadcast_with_a_key_is_safe_to_send_again(sqlite_url: str) -> None:
    """Sent again with its idempotency key (after a timeout, say), a broadcast answers the same
    ids and writes nothing; a different text under the same key refuses the whole broadcast,
    naming the first recipient whose key it reuses."""
    sender = RecordingSender()
    ref = start(sqlite_url, sender)
    recipients = [("+15550001", f"user-{i}") for i in range(600)]  # more keys than one IN (...) list
    first = ref.ask(Broadcast(recipients, text="hello", idempotency_key="launch"))
    again = ref.ask(Broadcast(recipients, text="hello", idempotency_key="launch"))
    assert again == first
    with pytest.raises(IdempotencyConflict, match=r"^recipient 0: "):
        ref.ask(Broadcast(recipients[:2], text="changed", idempotency_key="launch"))
    sender.wait_for(600)
    assert ref.ask(GetStats()).total == 600
    assert ref.ask(GetMessage(first[5])).idempotency_key == "launch:5"


def test_invalid_broadcast_writes_nothing(sqlite_url: str) -> None:
    """One bad recipient (named by its place) or a bad shared field refuses the whole broadcast."""
    ref = start(sqlite_url, RecordingSender())
    with pytest.raises(ValidationError, match="recipient 2: user_id"):
        ref.ask(Broadcast([("+1", "a"), ("+1", "b"), ("+1", "")], text="x"))
    with pytest.raises(ValidationError, match="text or an attachment"):
        ref.ask(Broadcast([("+1", "a")]))
    assert ref.ask(GetStats()).total == 0


def test_restart_delivers_pending_retrying_and_scheduled_in_order(sqlite_url: str) -> None:
    """Stop with pending, retrying and scheduled rows; a new supervisor delivers them all in order."""
    clock = FakeClock()

    def script(message: Message, call: int) -> None:
        if message.phone == "+paused":
            raise RateLimited(retry_after=3600)
        if message.phone == "+flaky":
            raise TransientError("down")

    first = start(sqlite_url, RecordingSender(script), clock=clock)
    plan = [Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.NORMAL]
    paused = [enqueue(first, phone="+paused", priority=p) for p in plan]
    flaky = [enqueue(first, phone="+flaky", priority=p, max_attempts=9) for p in plan]
    later = enqueue(first, phone="+later", scheduled_at=clock.now() + timedelta(minutes=30))
    eventually(lambda: all(status_of(first, i) is Status.RETRYING for i in flaky))
    stats = first.ask(GetStats()).by_account
    assert stats["+paused"] == {Status.PENDING: 4}
    first.stop()

    clock.advance(7200)
    sender = RecordingSender()
    second = start(sqlite_url, sender, clock=clock)
    sender.wait_for(9)
    expected = [paused[2], paused[1], paused[3], paused[0]]
    assert sender.ids("+paused") == expected
    assert sender.ids("+flaky") == [flaky[2], flaky[1], flaky[3], flaky[0]]
    assert sender.ids("+later") == [later]
    eventually(lambda: final(second, paused + flaky + [later]))


def test_crashed_account_is_restarted_and_others_unaffected(sqlite_url: str,
                                                            logs: LogCapture) -> None:
    """A fault in one account actor restarts it from the database; other accounts keep sending."""
    sender = RecordingSender()
    ref = start(sqlite_url, sender)
    enqueue(ref, phone="+victim")
    enqueue(ref, phone="+bystander")
    sender.wait_for(2)
    account_ref("+victim").tell("an unknown message: the actor raises")
    eventually(lambda: logs.events("account.restarted"))
    after = [enqueue(ref, phone="+victim", text=str(i)) for i in range(5)]
    others = [enqueue(ref, phone="+bystander", text=str(i)) for i in range(5)]
    eventually(lambda: final(ref, after + others))
    assert logs.events("account.crashed")[0]["account"] == mask_phone("+victim")


def test_crash_storm_parks_only_that_account(sqlite_url: str, logs: LogCapture) -> None:
    """More than max_restarts crashes within the period parks the account; resume restarts it."""
    sender = RecordingSender()
    settings = SupervisorSettings(max_restarts=2, restart_period=60)
    ref = start_with(sqlite_url, sender, settings)
    enqueue(ref, phone="+storm")
    sender.wait_for(1)
    for crash in range(3):
        account_ref("+storm").tell("boom")
        eventually(lambda c=crash: len(logs.events("account.crashed")) == c + 1)
        if crash < 2:
            eventually(lambda c=crash: len(logs.events("account.restarted")) == c + 1)
    eventually(lambda: logs.events("account.parked"))
    parked_msg = enqueue(ref, phone="+storm", text="waits")
    other = enqueue(ref, phone="+calm")
    eventually(lambda: status_of(ref, other) is Status.COMPLETED)
    assert status_of(ref, parked_msg) is Status.PENDING
    assert ref.ask(GetHealth()).parked_accounts == (mask_phone("+storm"),)
    assert ref.ask(ResumeAccount("+storm")) is True
    eventually(lambda: status_of(ref, parked_msg) is Status.COMPLETED)


def test_cleanup_removes_only_old_finished_rows(sqlite_url: str) -> None:
    """Cleanup deletes completed/failed/cancelled rows older than the retention, hourly too."""
    clock = FakeClock()
    sender = RecordingSender()
    settings = SupervisorSettings(retention=timedelta(days=7), cleanup_interval=3600)
    ref = start_with(sqlite_url, sender, settings, clock=clock)
    done = enqueue(ref)
    eventually(lambda: status_of(ref, done) is Status.COMPLETED)
    scheduled = enqueue(ref, scheduled_at=clock.now() + timedelta(days=30))
    cancelled = enqueue(ref, scheduled_at=clock.now() + timedelta(days=30))
    ref.ask(CancelMessage(cancelled))
    clock.advance(6 * 86400)
    assert ref.ask(CleanupNow()) == 0
    clock.advance(86400 + 3600)  # crosses the retention and fires the hourly timer
    eventually(lambda: ref.ask(GetStats()).total == 1)
    assert [m.id for m in ref.ask(ListMessages("+15550001"))] == [scheduled]


def test_cleanup_deletes_in_chunks_and_counts_them_all(sqlite_url: str) -> None:
    """More finished rows than one chunk: CleanupNow goes on chunk after chunk and answers the total;
    open work is untouched and keeps flowing."""
    from actors import AccountSettings
    from actors.persistence import CLEANUP_CHUNK

    clock = FakeClock()
    sender = RecordingSender()
    # No hourly cleanup: it would share the rows with CleanupNow (each answers for its own).
    settings = SupervisorSettings(cleanup_interval=None, account=AccountSettings(idle_timeout=None))
    ref = start_with(sqlite_url, sender, settings, clock=clock)
    count = 2 * CLEANUP_CHUNK + 17
    ids = ref.ask(EnqueueBatch([Enqueue(phone=f"+1555000{n % 3}", user_id="42", text=str(n))
                                for n in range(count)]))
    sender.wait_for(count)
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == count)
    open_id = enqueue(ref, scheduled_at=clock.now() + timedelta(days=30))
    clock.advance(8 * 86400)  # past the 7-day retention
    assert ref.ask(CleanupNow()) == count
    assert ref.ask(GetStats()).total == 1
    assert status_of(ref, open_id) is Status.PENDING
    with pytest.raises(Exception, match=str(ids[0])):
        ref.ask(GetMessage(ids[0]))


def test_database_error_reaches_the_caller_and_clears(sqlite_url: str) -> None:
    """With the table gone, enqueue raises StorageError and health is degraded; then it recovers."""
    sender = RecordingSender()
    ref = start(sqlite_url, sender)
    outsider = Storage(open_database(sqlite_url))
    outsider.db.execute_sql("ALTER TABLE message_queue RENAME TO hidden")
    with pytest.raises(StorageError):
        enqueue(ref)
    health = ref.ask(GetHealth())
    assert health.degraded and "no such table" in (health.last_error or "")
    outsider.db.execute_sql("ALTER TABLE hidden RENAME TO message_queue")
    mid = enqueue(ref)
    eventually(lambda: status_of(ref, mid) is Status.COMPLETED)
    assert not ref.ask(GetHealth()).degraded
    outsider.close()


def test_logs_mask_phones_and_never_carry_text(sqlite_url: str, logs: LogCapture) -> None:
    """Events have stable names and masked accounts; no event contains the phone or the text."""
    sender = RecordingSender(lambda m, n: (_ for _ in ()).throw(TransientError(m.text))
                             if n == 1 else None)
    ref = start(sqlite_url, sender, backoff=__import__("actors").BackoffPolicy(base=0.01))
    mid = enqueue(ref, phone="+19995550123", user_id="canary-user", text="canary text")
    eventually(lambda: status_of(ref, mid) is Status.COMPLETED)
    names = {e["event"] for e in logs.entries}
    assert {"message.enqueued", "message.retrying", "message.sent", "account.started"} <= names
    dump = repr(logs.entries)
    for secret in ("+19995550123", "canary text", "canary-user"):
        assert secret not in dump
    assert "canary" not in (ref.ask(GetMessage(mid)).last_error or "")


def test_stop_is_graceful_and_refuses_later_commands(sqlite_url: str) -> None:
    """stop() lets the in-flight send finish and record; later asks fail with ActorDeadError."""
    gate = threading.Event()
    sender = RecordingSender(lambda m, n: gate.wait(10))
    ref = start(sqlite_url, sender)
    mid = enqueue(ref)
    sender.wait_for(1)
    stopper = threading.Thread(target=ref.stop)
    stopper.start()
    gate.set()
    stopper.join(20)
    assert Storage(open_database(sqlite_url)).get(mid).status is Status.COMPLETED
    with pytest.raises(pykka.ActorDeadError):
        ref.ask(GetStats())


def test_scheduled_work_for_a_stopped_account_starts_no_thread_until_due(sqlite_url: str) -> None:
    """A message scheduled ahead for an account that is not running waits in the supervisor's
    timer heap, not in a thread; it is sent when it falls due, and a due one still goes at once."""
    clock = FakeClock()
    sender = RecordingSender()
    ref = start(sqlite_url, sender, clock=clock, idle_timeout=30)
    later = ref.ask(EnqueueBatch([Enqueue(phone=f"+1555000{n}", user_id="42", text="later",
                                          scheduled_at=clock.now() + timedelta(hours=1))
                                  for n in range(5)]))
    assert ref.ask(GetHealth()).accounts_running == 0
    clock.advance(1800)
    assert ref.ask(GetHealth()).accounts_running == 0 and sender.calls == []
    clock.advance(1800)
    eventually(lambda: sorted(sender.ids()) == sorted(later))
    assert ref.ask(GetHealth()).accounts_running == 5


def test_many_accounts_take_turns_on_a_few_threads(sqlite_url: str) -> None:
    """300 accounts with 3 messages each run on 4 account threads: every message is sent, in
    order per account, no account waits for another to finish, and no thread per account."""
    sender = RecordingSender()
    settings = SupervisorSettings(account_threads=4, account=AccountSettings(idle_timeout=None))
    ref = start_with(sqlite_url, sender, settings)
    phones = [f"+1555{n:06d}" for n in range(300)]
    ids = ref.ask(EnqueueBatch([Enqueue(phone=p, user_id="42", text=f"{k}") for k in range(3)
                                for p in phones]))
    eventually(lambda: len(sender.calls) == len(ids), timeout=60)
    assert sorted(sender.ids()) == sorted(ids)
    for phone in phones:
        assert [m.text for m in sender.calls if m.phone == phone] == ["0", "1", "2"]
    # The accounts interleave: every one has sent its first message before two thirds of all
    # the sends are done (one account after the other would put the last first send at the end).
    firsts = {m.phone: n for n, m in reversed(list(enumerate(sender.calls)))}
    assert max(firsts.values()) < 2 * len(sender.calls) / 3
    assert ref.ask(GetHealth()).accounts_running == 300
    assert sum(t.name == "postroom-actor" for t in threading.enumerate()) <= 4


def test_mail_arriving_during_sends_and_retries_never_strands_an_account(sqlite_url: str) -> None:
    """Sends run off the account's turn: new messages, timers and outcomes interleave with them.
    With every other attempt failing and messages enqueued while sends are under way, all drain."""
    calls = itertools.count()

    def flaky(message: Message, _: int) -> None:
        time.sleep(0.002)  # a send long enough for mail to arrive meanwhile
        if next(calls) % 2:
            raise TransientError("every other attempt fails")

    sender = RecordingSender(flaky)
    ref = start(sqlite_url, sender, backoff=BackoffPolicy(base=0.01, max_delay=0.05))
    ids: list[int] = []
    for wave in range(6):
        ids += ref.ask(EnqueueBatch([Enqueue(phone=f"+1555000{n % 5}", user_id="42", text=f"{wave}",
                                             max_attempts=50) for n in range(25)]))
        time.sleep(0.02)
    eventually(lambda: final(ref, ids), timeout=60)
    assert {status_of(ref, i) for i in ids} == {Status.COMPLETED}


def test_idle_account_stops_and_wakes_for_scheduled_work(sqlite_url: str,
                                                         logs: LogCapture) -> None:
    """An account with nothing due stops after the idle timeout; its scheduled message still goes."""
    clock = FakeClock()
    sender = RecordingSender()
    ref = start(sqlite_url, sender, clock=clock, idle_timeout=30)
    now_id = enqueue(ref)
    later = enqueue(ref, scheduled_at=clock.now() + timedelta(hours=1))
    sender.wait_for(1)
    eventually(lambda: status_of(ref, now_id) is Status.COMPLETED)
    # The account arms its idle timer once it has recorded the send, a moment after the row
    # reads COMPLETED: time moves on until it has stopped (waiting on this supervisor's own
    # count, since an account.stopped event could come from another test's account).
    for _ in range(10):
        clock.advance(31)
        with contextlib.suppress(AssertionError):
            eventually(lambda: ref.ask(GetHealth()).accounts_running == 0, timeout=1)
            break
    assert ref.ask(GetHealth()).accounts_running == 0
    assert logs.events("account.stopped")
    clock.advance(3600)
    assert sender.wait_for(2) == [now_id, later]
    eventually(lambda: status_of(ref, later) is Status.COMPLETED)
    fresh = enqueue(ref, phone="+15550001", text="new work restarts it")
    eventually(lambda: status_of(ref, fresh) is Status.COMPLETED)


@pytest.mark.parametrize("lift", [False, True])
def test_account_pause_survives_a_restart(sqlite_url: str, lift: bool) -> None:
    """A rate-limit pause is persisted: a new supervisor sends nothing for that account until it
    ends, or until ResumeAccount lifts it."""
    clock = FakeClock()
    first_sender = RecordingSender(lambda m, n: (_ for _ in ()).throw(RateLimited(600)))
    first = start(sqlite_url, first_sender, clock=clock)
    a = enqueue(first, phone="+paused", text="a")
    b = enqueue(first, phone="+paused", text="b")
    eventually(lambda: status_of(first, a) is Status.PENDING and len(first_sender.calls) == 1)
    first.stop()

    clock.advance(10)
    sender = RecordingSender()
    second = start(sqlite_url, sender, clock=clock)
    probe = enqueue(second, phone="+other")
    eventually(lambda: probe in sender.ids())
    assert sender.ids("+paused") == []  # the pause outlived the process
    if lift:
        assert second.ask(ResumeAccount("+paused")) is True
    else:
        clock.advance(590)
    eventually(lambda: sender.ids("+paused") == [a, b])


@pytest.mark.parametrize("idle_timeout", [None, 5.0], ids=["running", "stopped-while-idle"])
def test_suspension_until_lifted_disables_the_account_across_restarts(
        sqlite_url: str, idle_timeout: float | None) -> None:
    """AccountSuspended without a duration (banned, session revoked): the account sends nothing,
    however long we wait and across a restart, its messages stay pending with their attempts
    uncounted, `postroom status` shows it, other accounts go on, and ResumeAccount lifts it."""
    from actors.errors import AccountSuspended
    from postroom_cli.status import read_pauses
    from postroom_common import AccountPause

    clock = FakeClock()
    def revoke(message: Message, _: int) -> None:
        if message.phone == "+banned":
            raise AccountSuspended("session revoked")

    revoked = RecordingSender(revoke)
    first = start(sqlite_url, revoked, clock=clock, idle_timeout=idle_timeout)
    a = enqueue(first, phone="+banned", text="a")
    b = enqueue(first, phone="+banned", text="b")
    eventually(lambda: len(revoked.calls) == 1 and status_of(first, a) is Status.PENDING)
    assert read_pauses(sqlite_url) == [AccountPause("+banned", None, "AccountSuspended")]
    clock.advance(10 * 3600)  # far past BackoffPolicy.max_retry_after: a timed pause would have ended
    c = enqueue(first, phone="+banned", text="c, enqueued while disabled")
    probe = enqueue(first, phone="+other")
    eventually(lambda: status_of(first, probe) is Status.COMPLETED)
    assert [m.id for m in revoked.calls if m.phone == "+banned"] == [a]
    assert first.ask(GetMessage(a)).attempts == 0
    first.stop()

    sender = RecordingSender()
    second = start(sqlite_url, sender, clock=clock, idle_timeout=idle_timeout)
    probe = enqueue(second, phone="+other")
    eventually(lambda: probe in sender.ids())
    clock.advance(10 * 3600)
    probe = enqueue(second, phone="+other")
    eventually(lambda: probe in sender.ids())
    assert sender.ids("+banned") == []  # the suspension outlived the process
    if idle_timeout is not None:
        clock.advance(idle_timeout + 1)
        # A disabled account frees its thread like any idle one; lifting starts it again.
        eventually(lambda: second.ask(GetHealth()).accounts_running == 0)
    assert second.ask(ResumeAccount("+banned")) is True
    eventually(lambda: sender.ids("+banned") == [a, b, c])
    assert read_pauses(sqlite_url) == []
    assert second.ask(ResumeAccount("+banned")) is False  # nothing left to lift


def test_pacing_rate_and_per_recipient_interval(sqlite_url: str) -> None:
    """An account paced at 1/s sends one message per second; a recipient waits its interval
    while other recipients go first; other accounts are not paced."""
    from actors.pacing import Pacing

    clock = FakeClock()
    sender = RecordingSender()
    settings = SupervisorSettings(
        account=__import__("actors").AccountSettings(idle_timeout=None),
        pacing_by_account={"+slow": Pacing(rate=1.0), "+chatty": Pacing(per_recipient_interval=1.0)},
    )
    ref = start_with(sqlite_url, sender, settings, clock=clock)
    slow = [enqueue(ref, phone="+slow", text=str(i)) for i in range(3)]
    chat = [enqueue(ref, phone="+chatty", user_id=u) for u in ("chat-1", "chat-1", "chat-2")]
    free = [enqueue(ref, phone="+free", text=str(i)) for i in range(3)]
    eventually(lambda: sender.ids("+free") == free)  # unpaced: all at once
    eventually(lambda: sender.ids("+chatty") == [chat[0], chat[2]])
    eventually(lambda: sender.ids("+slow") == [slow[0]])
    clock.advance(1)
    eventually(lambda: sender.ids("+slow") == slow[:2])
    eventually(lambda: sender.ids("+chatty") == [chat[0], chat[2], chat[1]])
    clock.advance(1)
    eventually(lambda: sender.ids("+slow") == slow)
