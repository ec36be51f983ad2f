"""Outcome hooks: the host hears each final outcome and each account's pause once, off the hot path."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pykka
import pytest

from actors.clock import FakeClock
from actors.directory import AccountDirectory
from actors.hooks import HookDispatcher
from actors.messages import BatchKind, CancelRow, Insert, LiftPause, RecordAndClaim, SettleInFlight
from actors.persistence import HealthState, PersistenceActor
from actors.runtime import ThreadFuture, TurnPool
from postroom_common import AccountPause, Delivery, NewMessage, Priority, Transition
from storage import Storage
from supervisor import (
    AccountEvent,
    AccountEventKind,
    AccountSettings,
    AccountSuspended,
    AsyncPostroom,
    BackoffPolicy,
    CancelMessage,
    Drain,
    Enqueue,
    GetStats,
    Hooks,
    InvalidTransition,
    Message,
    OutcomeEvent,
    RateLimited,
    ResumeAccount,
    Status,
    Supervisor,
    SupervisorSettings,
    TransientError,
    ValidationError,
)
from tests.conftest import LogCapture, eventually
from tests.integration.helpers import FixedRandom, RecordingSender

pytestmark = pytest.mark.timeout(90)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
FAST_RETRIES = SupervisorSettings(account=AccountSettings(
    idle_timeout=None, backoff=BackoffPolicy(base=0.01, max_delay=0.01, jitter=0.0)))


class Collected:
    """A hook that keeps every event it is called with (thread-safe), and can run `also` after."""

    def __init__(self, also: Callable[[Any], None] | None = None) -> None:
        self.events: list[Any] = []
        self._lock = threading.Lock()
        self.also = also

    def __call__(self, event: Any) -> None:
        with self._lock:
            self.events.append(event)
        if self.also is not None:
            self.also(event)

    def of(self, kind: type) -> list[Any]:
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]


def _start(url: str, sender: Callable[[Message], Any], hooks: Hooks,
           settings: SupervisorSettings = FAST_RETRIES) -> pykka.ActorRef[Supervisor]:
    return Supervisor.start(database=url, sender=sender, settings=settings, hooks=hooks, rng=FixedRandom())


def test_slow_and_raising_hooks_delay_no_send_and_hear_every_outcome_once(
        database_url: str, logs: LogCapture) -> None:
    """200 messages over 10 accounts while the outcome hook sleeps 2 s on its first event and
    raises on every other one: every send happens while it still sleeps, every message is
    recorded, and each final outcome (completed, failed after max_attempts, cancelled) reaches
    the hook exactly once; its failures are logged by type, without text or phone."""
    woke = threading.Event()
    send_times: list[float] = []

    def slow_then_raising(event: OutcomeEvent) -> None:
        if not woke.is_set() and len(outcomes.events) == 1:
            time.sleep(2)
            woke.set()
        if event.message_id % 2:
            raise RuntimeError(f"hook broke on {event.account}")

    def on_account(event: AccountEvent) -> None:
        raise ValueError("the account hook raises too")

    def send(message: Message) -> None:
        send_times.append(time.monotonic())
        if message.text.startswith("doomed"):
            raise TransientError(f"cannot deliver {message.text}")

    outcomes = Collected(slow_then_raising)
    ref = _start(database_url, send, Hooks(on_outcome=outcomes, on_account=on_account))
    phones = [f"+1555000{i:04d}" for i in range(10)]
    texts = ["doomed secret" if i % 20 == 0 else f"secret {i}" for i in range(200)]
    ids = [ref.ask(Enqueue(phone=phones[i % 10], user_id=f"u{i}", text=texts[i], max_attempts=2))
           for i in range(200)]
    later = [ref.ask(Enqueue(phone=phones[0], user_id="late", text="never", scheduled_at=datetime(2099, 1, 1,
                                                                                              tzinfo=UTC)))
             for _ in range(3)]
    cancelled = [ref.ask(CancelMessage(i)).id for i in later]
    assert ref.ask(Drain(timeout=30)) == 0
    hook_still_asleep = not woke.is_set()
    stats = ref.ask(GetStats())
    assert hook_still_asleep, "the sends waited for the sleeping hook"
    assert len(send_times) == 200 + 10  # the ten doomed ones tried twice
    assert stats.by_status[Status.COMPLETED] == 190 and stats.by_status[Status.FAILED] == 10
    assert stats.by_status[Status.CANCELLED] == 3
    eventually(lambda: len(outcomes.events) >= 203, timeout=30)
    ref.stop()
    seen = Counter(e.message_id for e in outcomes.events)
    assert set(seen) == {*ids, *cancelled} and set(seen.values()) == {1}
    by_id = {e.message_id: e for e in outcomes.events}
    failed = [by_id[ids[i]] for i in range(0, 200, 20)]
    assert {(e.status, e.attempts) for e in failed} == {(Status.FAILED, 2)}
    assert all(e.error == "TransientError: cannot deliver [redacted]" for e in failed)
    assert {by_id[i].status for i in cancelled} == {Status.CANCELLED}
    assert by_id[ids[1]].status is Status.COMPLETED and by_id[ids[1]].error is None
    assert by_id[ids[1]].account == phones[1]
    failures = logs.events("hook.failed")
    assert len(failures) == 102 and {f["error"] for f in failures} == {"RuntimeError"}
    assert "secret" not in repr(logs.entries) and phones[1] not in repr(failures)


def test_account_pause_disablement_and_lifting_reach_the_account_hook(sqlite_url: str) -> None:
    """A rate limit pauses (until its end), a suspension without duration disables, and
    `ResumeAccount` lifts: each is one event, with the exception's type as its reason; a
    resume of an account that was not paused fires nothing."""
    clock = FakeClock()

    def send(message: Message) -> None:
        if message.text == "slow down":
            raise RateLimited(retry_after=60)
        if message.text == "banned":
            raise AccountSuspended("session revoked")

    accounts = Collected()
    ref = Supervisor.start(database=sqlite_url, sender=send, settings=FAST_RETRIES, clock=clock,
                           hooks=Hooks(on_account=accounts), rng=FixedRandom())
    ref.ask(Enqueue(phone="+15550001", user_id="u", text="slow down"))
    ref.ask(Enqueue(phone="+15550002", user_id="u", text="banned"))
    eventually(lambda: len(accounts.events) == 2)
    assert ref.ask(ResumeAccount("+15550002")) is True
    assert ref.ask(ResumeAccount("+15550003")) is False
    eventually(lambda: len(accounts.events) == 3)
    ref.stop()
    paused, disabled = sorted(accounts.events[:2], key=lambda e: e.account)
    assert (paused.kind, paused.reason) == (AccountEventKind.PAUSED, "RateLimited")
    assert paused.until is not None and round((paused.until - clock.now()).total_seconds()) == 60
    assert (disabled.kind, disabled.until, disabled.reason) == (AccountEventKind.DISABLED, None,
                                                                "AccountSuspended")
    lifted = accounts.events[2]
    assert (lifted.account, lifted.kind, lifted.reason) == ("+15550002", "lifted", "ResumeAccount")


def test_async_hooks_run_on_the_bots_loop_without_blocking_it(sqlite_url: str, logs: LogCapture) -> None:
    """Through `AsyncPostroom`, an `async def` hook runs on the bot's loop (a slow one awaits
    there while the loop goes on), and one that raises is logged."""

    async def main() -> tuple[list[float], set[bool]]:
        loop = asyncio.get_running_loop()
        seen: list[OutcomeEvent] = []
        on_loop: set[bool] = set()

        async def on_outcome(event: OutcomeEvent) -> None:
            on_loop.add(asyncio.get_running_loop() is loop)
            await asyncio.sleep(1)
            seen.append(event)
            if event.status is Status.FAILED:
                raise RuntimeError("async hook broke")

        def send(message: Message) -> None:
            if message.text == "bad":
                raise TransientError("no")

        room = await AsyncPostroom.start(sqlite_url, send, settings=FAST_RETRIES,
                                         hooks=Hooks(on_outcome=on_outcome))
        ids = [await room.enqueue("+15550001", "u", text, max_attempts=1) for text in ("ok", "bad", "ok")]
        ticks: list[float] = []
        deadline = time.monotonic() + 20
        while len(seen) < 3 and time.monotonic() < deadline:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            ticks.append(time.monotonic() - before)
        await room.stop()
        assert sorted(e.message_id for e in seen) == ids
        return ticks, on_loop

    ticks, on_loop = asyncio.run(main())
    assert on_loop == {True}
    assert max(ticks) < 0.5  # the hooks' second of sleep was awaited, never blocking the loop
    assert [f["error"] for f in logs.events("hook.failed")] == ["RuntimeError"]


def test_an_async_hook_needs_a_loop_and_a_hook_must_be_callable(sqlite_url: str, tmp_path: Any) -> None:
    """Refused with `ValidationError` before the database is opened."""

    async def on_outcome(event: OutcomeEvent) -> None:
        pass

    url = f"sqlite:///{tmp_path}/never.db"
    with pytest.raises(ValidationError, match="async hook"):
        Supervisor.start(database=url, sender=lambda m: None, hooks=Hooks(on_outcome=on_outcome))
    assert not (tmp_path / "never.db").exists()
    with pytest.raises(ValidationError, match="on_account"):
        Hooks(on_account="notify")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="queue_size"):
        Hooks(queue_size=0)


def test_a_full_queue_drops_and_counts_events_and_never_blocks_the_writer(
        sqlite_url: str, logs: LogCapture) -> None:
    """A hook stuck on its first event with room for 5 more: the 50 messages are all sent and
    recorded meanwhile; the events that did not fit are dropped and counted (one warning at
    once, the rest said at the stop), and the hook gets the queued ones once it moves on."""
    release = threading.Event()
    outcomes = Collected(lambda event: release.wait(30))
    sender = RecordingSender()
    ref = _start(sqlite_url, sender, Hooks(on_outcome=outcomes, queue_size=5))
    for i in range(50):
        ref.ask(Enqueue(phone=f"+1555000{i % 5}", user_id="u", text="hi"))
    assert ref.ask(Drain(timeout=30)) == 0
    assert len(sender.calls) == 50
    warnings = eventually(lambda: logs.events("hooks.dropped"))
    release.set()
    eventually(lambda: len(outcomes.events) == 6)
    ref.stop()
    reports = logs.events("hooks.dropped")
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"  # then once a minute at most
    assert len(reports) == 2 and sum(w["events"] for w in reports) == reports[-1]["total"] == 44


def test_with_no_hook_no_dispatcher_runs(sqlite_url: str) -> None:
    """Without a hook (or with `Hooks()` naming none) no thread is started and the writer
    builds no event."""
    for hooks in (None, Hooks()):
        ref = Supervisor.start(database=sqlite_url, sender=lambda m: None, hooks=hooks)
        assert ref.proxy().hooks.get() is None
        assert ref.proxy().persistence.get().proxy().hooks.get() is None
        ref.stop()
    assert not [t for t in threading.enumerate() if t.name == "postroom-hooks"]


# -- the writer's commits, one by one -----------------------------------------------------------


def _new(text: str = "hi", max_attempts: int = 5) -> NewMessage:
    return NewMessage(phone="+15550001", user_id="u", text=text, attachment=None, priority=Priority.NORMAL,
                      created_at=NOW, scheduled_at=None, max_attempts=max_attempts, idempotency_key=None)


def _ask(writer: PersistenceActor, request: Any) -> Any:
    future = ThreadFuture()
    writer._commit([(request, future)])
    return future.get(timeout=10)


def test_only_what_a_commit_made_final_fires_and_a_stale_record_fires_nothing(storage: Storage) -> None:
    """Settled back to retrying: nothing; a late record of the attempt settled since (stale):
    nothing; the next attempt's record: completed; an at-most-once settlement and one out of
    attempts: failed; a cancel: cancelled, and a second cancel (refused) nothing; a lift of a
    pause: lifted, and of none nothing."""
    outcomes = Collected()
    hooks = HookDispatcher(Hooks(on_outcome=outcomes, on_account=outcomes))
    writer = PersistenceActor(TurnPool("test-writer", 2), storage, FakeClock(NOW), HealthState(),
                              AccountDirectory(), pykka.ThreadingActor.start(), hooks=hooks)
    first, second, third, fourth = _ask(writer, Insert([_new(), _new(), _new(max_attempts=1), _new()],
                                                       BatchKind.BATCH))
    phone = "+15550001"
    _ask(writer, RecordAndClaim(phone, claim=first))
    retried = _ask(writer, SettleInFlight(Delivery.AT_LEAST_ONCE, phone))
    assert [m.status for m in retried] == [Status.RETRYING]
    stale = _ask(writer, RecordAndClaim(phone, record=Transition(first, 1, Status.COMPLETED, NOW)))
    assert not stale.applied
    _ask(writer, RecordAndClaim(phone, claim=first))
    assert _ask(writer, RecordAndClaim(phone, record=Transition(first, 2, Status.COMPLETED, NOW))).applied
    _ask(writer, RecordAndClaim(phone, claim=second))
    _ask(writer, SettleInFlight(Delivery.AT_MOST_ONCE, phone))
    _ask(writer, RecordAndClaim(phone, claim=third))
    settled = _ask(writer, RecordAndClaim(phone, settle=(Delivery.AT_LEAST_ONCE, phone)))
    assert [m.status for m in settled.settled] == [Status.FAILED]
    _ask(writer, CancelRow(fourth))
    with pytest.raises(InvalidTransition):
        _ask(writer, CancelRow(fourth))
    storage_pause(storage, phone)
    assert _ask(writer, LiftPause(phone)) is True
    assert _ask(writer, LiftPause(phone)) is False
    hooks.stop()
    assert [(e.message_id, e.status) for e in outcomes.of(OutcomeEvent)] == [
        (first, Status.COMPLETED), (second, Status.FAILED), (third, Status.FAILED),
        (fourth, Status.CANCELLED)]
    lifted = [(e.kind, e.reason) for e in outcomes.of(AccountEvent)]
    assert lifted == [(AccountEventKind.LIFTED, "ResumeAccount")]


def storage_pause(storage: Storage, phone: str) -> None:
    with storage.write_transaction():
        storage.set_pause(AccountPause(phone, None, "AccountSuspended"), NOW)


# -- a host that configured no logging ----------------------------------------------------------

_UNCONFIGURED_BOT = textwrap.dedent("""
    import sys, threading
    from supervisor import Drain, Enqueue, Hooks, Supervisor
    heard = []
    def on_outcome(event):
        heard.append(event.status.value)
        if sys.argv[2] == "raising":
            raise RuntimeError("the host's hook broke on " + event.account)
    ref = Supervisor.start(sys.argv[1], lambda m: None, hooks=Hooks(on_outcome=on_outcome))
    for _ in range(3):
        ref.ask(Enqueue(phone="+15550001234", user_id="42", text="secret words"))
    assert ref.ask(Drain(timeout=30)) == 0
    ref.stop()
    print("bot:", heard, flush=True)
""")


@pytest.mark.parametrize("hook", ["quiet", "raising"])
def test_an_unconfigured_host_gets_no_output_from_the_hooks(tmp_path: Any, hook: str) -> None:
    """A host that configured no logging sees nothing on stdout from postroom; on stderr only
    a raising hook's `hook.failed` errors (stdlib's last resort prints errors), naming no text
    and no phone; nothing at all when its hook is well."""
    result = subprocess.run([sys.executable, "-c", _UNCONFIGURED_BOT, f"sqlite:///{tmp_path}/bot.db", hook],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["bot: ['completed', 'completed', 'completed']"]
    if hook == "quiet":
        assert result.stderr == ""
    else:
        lines = result.stderr.splitlines()
        assert len(lines) == 3 and all(line.startswith("hook.failed hook=on_outcome error=RuntimeError")
                                       for line in lines), result.stderr
        assert "+15550001234" not in result.stderr and "secret" not in result.stderr
