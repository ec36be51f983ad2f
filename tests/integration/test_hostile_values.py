"""Values at the edge of their type, from callers and senders, through a running supervisor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from actors.errors import AccountSuspended, RateLimited, TransientError
from storage import Storage, open_database
from supervisor import (
    AccountSettings,
    BackoffPolicy,
    Enqueue,
    FakeClock,
    GetHealth,
    GetMessage,
    Message,
    Status,
    SupervisorSettings,
)
from tests.conftest import LogCapture, eventually
from tests.integration.helpers import RecordingSender, start, start_with


def test_a_message_for_the_year_9999_does_not_stop_the_timers(sqlite_url: str) -> None:
    """With a message scheduled in the year 9999 waiting, retries still fire on time."""
    sender = RecordingSender(lambda m, n: (_ for _ in ()).throw(TransientError("once")) if n == 1 else None)
    settings = SupervisorSettings(account=AccountSettings(
        backoff=BackoffPolicy(base=0.05, max_delay=0.1), idle_timeout=None))
    ref = start_with(sqlite_url, sender, settings)
    ref.ask(Enqueue(phone="+15550001", user_id="u", text="far",
                    scheduled_at=datetime(9999, 12, 31, tzinfo=UTC)))
    retried = ref.ask(Enqueue(phone="+15550002", user_id="u", text="retried"))
    eventually(lambda: ref.ask(GetMessage(retried)).status is Status.COMPLETED)
    assert sender.ids() == [retried, retried]


def _pause_end(url: str, clock: FakeClock) -> datetime | None:
    store = Storage(open_database(url))
    try:
        return next((p.until for p in store.pauses(clock.now())), None)
    finally:
        store.close()


@pytest.mark.parametrize("retry_after", [float("nan"), 0.0, -1.0, float("-inf")])
@pytest.mark.parametrize("kind", [RateLimited, AccountSuspended])
def test_a_rate_limit_without_a_usable_duration_is_not_a_hot_loop(
        sqlite_url: str, retry_after: float, kind: type[Exception]) -> None:
    """A sender answering "retry after NaN / 0 / -1" again and again pauses its account 1 s,
    then 2 s, then 4 s (and its attempts are given back), instead of being called in a loop."""

    def limited(message: Message, call: int) -> None:
        raise (RateLimited(retry_after) if kind is RateLimited else AccountSuspended("flood", retry_after))

    clock = FakeClock()
    sender = RecordingSender(limited)
    ref = start(sqlite_url, sender, clock=clock)
    message_id = ref.ask(Enqueue(phone="+15550001", user_id="u", text="hi"))
    for calls, pause in ((1, 1), (2, 2), (3, 4)):
        sender.wait_for(calls)
        eventually(lambda: _pause_end(sqlite_url, clock) == clock.now() + timedelta(seconds=pause))  # noqa: B023
        assert len(sender.calls) == calls
        paused = ref.ask(GetMessage(message_id))
        assert paused.status is Status.PENDING and paused.attempts == 0  # the attempt given back
        clock.advance(pause)


def test_an_attempt_past_1024_backs_off_instead_of_crashing(sqlite_url: str, logs: LogCapture) -> None:
    """A message on its 1,031st attempt fails transiently and is retried at the capped delay:
    2.0 ** 1024 overflowing would crash and park its account."""
    clock = FakeClock()
    sender = RecordingSender(lambda m, n: (_ for _ in ()).throw(TransientError("again")))
    ref = start(sqlite_url, sender, clock=clock)
    message_id = ref.ask(Enqueue(phone="+15550001", user_id="u", text="hi", max_attempts=10**6,
                                 scheduled_at=clock.now() + timedelta(hours=1)))
    store = Storage(open_database(sqlite_url))
    with store.write_transaction():  # as if it had already failed 1,030 times
        store.db.execute_sql("UPDATE message_queue SET attempts = 1030 WHERE id = ?", (message_id,))
    store.close()
    clock.advance(3600)
    eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.RETRYING)
    retrying = ref.ask(GetMessage(message_id))
    assert retrying.attempts == 1031
    assert retrying.available_at == clock.now() + timedelta(seconds=BackoffPolicy().max_delay)
    assert not logs.events("account.crashed") and ref.ask(GetHealth()).parked_accounts == ()


def test_an_exception_whose_str_raises_is_an_outcome_not_a_crash(sqlite_url: str, logs: LogCapture) -> None:
    """A sender's exception whose __str__ raises is recorded by its type; the account goes on."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    sender = RecordingSender(lambda m, n: (_ for _ in ()).throw(Unprintable()) if n == 1 else None)
    clock = FakeClock()
    ref = start(sqlite_url, sender, clock=clock)
    message_id = ref.ask(Enqueue(phone="+15550001", user_id="u", text="hi"))
    eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.RETRYING)
    assert ref.ask(GetMessage(message_id)).last_error == "Unprintable: (its message could not be read)"
    clock.advance(BackoffPolicy().base)
    eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.COMPLETED)
    assert not logs.events("account.crashed")
