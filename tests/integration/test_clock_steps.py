"""Steps of the wall clock (a suspend, an NTP step, an operator's `date -s`) under a running
supervisor, on a real SQLite file: schedules, retries and sleeping accounts follow a step
forward at once, and a step back never holds a retry for the step's length.

`FakeClock.jump` steps the wall clock alone; `advance` moves both clocks. Each test waits until
the timer under test is armed, steps the clock, moves the monotonic clock only as far as the
behaviour allows, then waits (in real time) for the send.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from actors.clock import REJOIN_RATE, FakeClock
from actors.errors import TransientError
from actors.retry import BackoffPolicy
from supervisor import Enqueue, GetHealth, GetMessage, Message, Status
from tests.conftest import eventually
from tests.integration.helpers import RecordingSender, start, status_of

PHONE = "+15550001"


def enqueue(ref: Any, **fields: Any) -> int:
    return int(ref.ask(Enqueue(phone=PHONE, user_id="42", text="hello", **fields)))


def armed(clock: FakeClock, count: int = 1) -> None:
    """Wait until `count` timers wait for a wall-clock instant (the one under test is armed)."""
    eventually(lambda: clock.pending_timers(wall_clock_only=True) == count)


def fail_first(message: Message, call: int) -> None:
    if call == 1:
        raise TransientError("try again")


def test_a_step_forward_sends_a_sleeping_accounts_schedule(sqlite_url: str) -> None:
    """A message due in an hour for an account with no actor (asleep in the supervisor's timer
    heap) is sent when the wall clock steps two hours forward, the monotonic clock standing still."""
    clock = FakeClock()
    sender = RecordingSender()
    ref = start(sqlite_url, sender, clock=clock)
    later = enqueue(ref, scheduled_at=clock.now() + timedelta(hours=1))
    armed(clock)
    assert ref.ask(GetHealth()).accounts_running == 0  # asleep: no actor until it is due
    clock.jump(timedelta(hours=2))
    assert sender.wait_for(1) == [later]


def test_a_step_forward_sends_a_running_accounts_schedule(sqlite_url: str) -> None:
    """The same for an account whose actor runs (it has just sent a message) and holds the
    scheduled message's timer itself."""
    clock = FakeClock()
    sender = RecordingSender()
    ref = start(sqlite_url, sender, clock=clock)
    first = enqueue(ref)
    sender.wait_for(1)
    later = enqueue(ref, scheduled_at=clock.now() + timedelta(hours=1))
    armed(clock)
    clock.jump(timedelta(hours=2))
    assert sender.wait_for(2) == [first, later]


def test_a_step_back_does_not_hold_a_retry_for_the_steps_length(sqlite_url: str) -> None:
    """A retry due in 1 s when the wall clock steps an hour back is sent after 1 s at
    `REJOIN_RATE` (2 s of monotonic time), not an hour later."""
    clock = FakeClock()
    sender = RecordingSender(fail_first)
    ref = start(sqlite_url, sender, clock=clock)
    message_id = enqueue(ref)
    eventually(lambda: status_of(ref, message_id) is Status.RETRYING)
    armed(clock)
    clock.jump(timedelta(hours=-1))
    clock.advance(1.0 / REJOIN_RATE + 0.01)
    assert sender.wait_for(2) == [message_id] * 2
    eventually(lambda: status_of(ref, message_id) is Status.COMPLETED)


def test_a_step_back_does_not_hold_a_sleeping_accounts_retry(sqlite_url: str) -> None:
    """An account that went to sleep until its retry (a minute ahead) wakes after that minute at
    `REJOIN_RATE` when the wall clock steps an hour back."""
    clock = FakeClock()
    sender = RecordingSender(fail_first)
    ref = start(sqlite_url, sender, clock=clock, idle_timeout=1.0,
                backoff=BackoffPolicy(base=60.0, jitter=0.0))
    message_id = enqueue(ref)
    eventually(lambda: status_of(ref, message_id) is Status.RETRYING)
    armed(clock)  # the account's timer: its retry, or its idle check first
    clock.advance(1.0)
    eventually(lambda: ref.ask(GetHealth()).accounts_running == 0)  # idle: retired, asleep
    armed(clock)  # the supervisor's timer for it
    left = (ref.ask(GetMessage(message_id)).available_at - clock.now()).total_seconds()
    clock.jump(timedelta(hours=-1))
    clock.advance(left / REJOIN_RATE + 0.01)
    assert sender.wait_for(2) == [message_id] * 2
    eventually(lambda: status_of(ref, message_id) is Status.COMPLETED)
