"""Values at the edge of their type, from callers and senders, through a running supervisor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from actors.errors import AccountSuspended, RateLimited, TransientError
from storage import Storage, open_database
from supervisor import (
    AccountSettings,
    BackoffPolicy,
    CleanupNow,
    Enqueue,
    FakeClock,
    GetHealth,
    GetMessage,
    Message,
    Status,
    SupervisorSettings,
    ValidationError,
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


class _LimitedNoInit(RateLimited):
    def __init__(self) -> None:  # never calls RateLimited.__init__: no retry_after at all
        pass


class _SuspendedNoInit(AccountSuspended):
    def __init__(self) -> None:  # neither reason nor retry_after
        pass


@pytest.mark.parametrize("kind", [_LimitedNoInit, _SuspendedNoInit])
def test_a_rate_limit_without_its_retry_after_pauses_the_minimum(
        sqlite_url: str, logs: LogCapture, kind: type[Exception]) -> None:
    """A RateLimited or AccountSuspended subclass that skipped __init__ pauses its account for
    min_pause with the attempt given back, instead of crashing the account until it is parked."""
    clock = FakeClock()
    sender = RecordingSender(lambda m, n: (_ for _ in ()).throw(kind()) if n == 1 else None)
    ref = start(sqlite_url, sender, clock=clock)
    message_id = ref.ask(Enqueue(phone="+15550001", user_id="u", text="hi"))
    eventually(lambda: _pause_end(sqlite_url, clock) == clock.now() + timedelta(seconds=1))
    paused = ref.ask(GetMessage(message_id))
    assert paused.status is Status.PENDING and paused.attempts == 0
    clock.advance(1)
    eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.COMPLETED)
    assert ref.ask(GetMessage(message_id)).attempts == 1
    assert not logs.events("account.crashed") and ref.ask(GetHealth()).parked_accounts == ()


def test_a_delay_past_the_year_9999_ends_at_the_last_instant(sqlite_url: str, logs: LogCapture) -> None:
    """With the clock in the last second a datetime holds, a retry and a rate limit are set for
    that last instant: adding their delay overflowed, crashed the account until it was parked,
    and marked its message "interrupted" although the process had not stopped."""
    last = datetime.max.replace(tzinfo=UTC)
    clock = FakeClock(last - timedelta(milliseconds=500))

    def script(message: Message, call: int) -> None:
        raise TransientError("later") if message.text == "retry" else RateLimited(3600)

    ref = start(sqlite_url, RecordingSender(script), clock=clock)
    retried = ref.ask(Enqueue(phone="+15550001", user_id="u", text="retry"))
    limited = ref.ask(Enqueue(phone="+15550002", user_id="u", text="limited"))
    eventually(lambda: ref.ask(GetMessage(retried)).status is Status.RETRYING)
    assert ref.ask(GetMessage(retried)).available_at == last
    eventually(lambda: _pause_end(sqlite_url, clock) == last)
    assert ref.ask(GetMessage(limited)).status is Status.PENDING
    assert not logs.events("account.crashed") and ref.ask(GetHealth()).parked_accounts == ()


def test_cleanup_older_than_zero_deletes_every_finished_row(sqlite_url: str) -> None:
    """`CleanupNow(older_than=timedelta(0))` deletes what finished before now: a zero timedelta
    is falsy, and the 7-day retention used to apply instead."""
    clock = FakeClock()
    ref = start(sqlite_url, RecordingSender(), clock=clock)
    message_id = ref.ask(Enqueue(phone="+15550001", user_id="u", text="hi"))
    eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.COMPLETED)
    clock.advance(1)
    assert ref.ask(CleanupNow(older_than=timedelta(0))) == 1


@pytest.mark.parametrize("older_than", [timedelta(seconds=-1), timedelta.max, 3600, "1 day"])
def test_a_bad_cleanup_age_is_refused(sqlite_url: str, older_than: object) -> None:
    """A negative, huge (past what a datetime can subtract) or non-timedelta age is a
    ValidationError, and nothing is deleted."""
    ref = start(sqlite_url, RecordingSender())
    message_id = ref.ask(Enqueue(phone="+15550001", user_id="u", text="hi"))
    eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.COMPLETED)
    with pytest.raises(ValidationError, match=r"CleanupNow\.older_than"):
        ref.ask(CleanupNow(older_than=older_than))  # type: ignore[arg-type]
    assert ref.ask(GetMessage(message_id)).status is Status.COMPLETED


def test_an_exception_whose_str_raises_keyboard_interrupt_is_an_outcome(
        sqlite_url: str, logs: LogCapture) -> None:
    """A sender's exception whose __str__ raises KeyboardInterrupt is recorded by its type and
    retried: it stopped every actor of the supervisor, leaving the message `processing`."""

    class Interrupting(Exception):
        def __str__(self) -> str:
            raise KeyboardInterrupt

    sender = RecordingSender(lambda m, n: (_ for _ in ()).throw(Interrupting()) if n == 1 else None)
    clock = FakeClock()
    ref = start(sqlite_url, sender, clock=clock)
    message_id = ref.ask(Enqueue(phone="+15550001", user_id="u", text="hi"))
    eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.RETRYING)
    assert ref.ask(GetMessage(message_id)).last_error == "Interrupting: (its message could not be read)"
    clock.advance(BackoffPolicy().base)
    eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.COMPLETED)
    assert ref.is_alive() and not logs.events("account.crashed")
