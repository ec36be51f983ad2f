"""postroom inside an asyncio bot: awaitable commands and coroutine senders on the bot's loop."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from actors.account import AccountSettings
from actors.privacy import mask_phone
from storage import Storage, open_database
from supervisor import (
    AccountSuspended,
    AsyncPostroom,
    BackoffPolicy,
    Enqueue,
    GetMessage,
    Message,
    Status,
    Supervisor,
    SupervisorSettings,
    ValidationError,
    sender_with_adapters,
)
from tests.conftest import LogCapture, eventually

ROOT = Path(__file__).resolve().parents[2]

def settings(**account: Any) -> SupervisorSettings:
    account.setdefault("idle_timeout", None)
    return SupervisorSettings(account=AccountSettings(**account))


@pytest.mark.timeout(60)
def test_thousands_of_asks_do_not_stall_the_loop(sqlite_url: str, logs: LogCapture) -> None:
    """2,000 awaited enqueues in flight at once; a 10 ms ticker keeps ticking meanwhile.

    A blocking await (pykka's own) would freeze the ticker for every commit; here the
    median slip stays near zero and the worst is bounded by scheduling noise.
    """

    async def main() -> tuple[list[int], list[float]]:
        room = await AsyncPostroom.start(sqlite_url, lambda m: None, settings=settings())
        slips: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                slips.append(now - last - 0.01)
                last = now

        tick = asyncio.create_task(ticker())
        ids = await asyncio.gather(*(room.enqueue(f"+1555{i % 20}", "u", f"t{i}")
                                     for i in range(2000)))
        done.set()
        await tick
        await room.stop()
        return list(ids), slips

    ids, slips = asyncio.run(main())
    assert len(set(ids)) == 2000
    assert len(slips) >= 3
    assert statistics.median(slips) < 0.02
    # The worst slip holds the loop's own work of starting 2,000 enqueues in one go (0.6 s
    # seen once on a loaded machine); blocking awaits would freeze it for all 2,000 commits.
    assert max(slips) < 1.0


def test_errors_come_back_through_the_loop(sqlite_url: str) -> None:
    """An invalid command raises its ValidationError at the await."""

    async def main() -> None:
        room = await AsyncPostroom.start(sqlite_url, lambda m: None, settings=settings())
        with pytest.raises(ValidationError):
            await room.ask(Enqueue(phone="", user_id="u", text="x"))
        await room.stop()

    asyncio.run(main())


@pytest.mark.parametrize("sender", [None, "send"], ids=["None", "str"])
def test_a_sender_that_cannot_be_called_is_refused_at_start(tmp_path: Path, sender: Any) -> None:
    """`AsyncPostroom.start` refuses a non-callable sender with ValidationError before it opens
    the database: no file is created, and a start right after owns it."""
    path = tmp_path / "postroom.db"

    async def main() -> None:
        with pytest.raises(ValidationError, match="sender must be a callable"):
            await AsyncPostroom.start(f"sqlite:///{path}", sender, settings=settings())
        assert not path.exists()
        room = await AsyncPostroom.start(f"sqlite:///{path}", lambda m: None, settings=settings())
        await room.stop()

    asyncio.run(main())


def test_a_disabled_account_makes_health_degraded(sqlite_url: str) -> None:
    """`room.health()` is degraded, naming the account masked, once an `async def` sender raised
    AccountSuspended without a duration; no database error is reported."""

    async def main() -> None:
        async def send(message: Message) -> None:
            raise AccountSuspended("banned")

        room = await AsyncPostroom.start(sqlite_url, send, settings=settings())
        await room.enqueue("+15550001234", "u", "hi")
        for _ in range(1000):
            health = await room.health()
            if health.disabled_accounts:
                break
            await asyncio.sleep(0.01)
        assert health.degraded and health.disabled_accounts == (mask_phone("+15550001234"),)
        assert health.last_error is None
        await room.stop()

    asyncio.run(main())


def test_coroutine_sender_runs_on_the_bots_loop(sqlite_url: str) -> None:
    """An async sender runs on the loop that started postroom, never on a private one."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[tuple[int, bool]] = []
        delivered = asyncio.Event()

        async def send(message: Message) -> None:
            seen.append((message.id, asyncio.get_running_loop() is loop))
            await asyncio.sleep(0)
            delivered.set()

        room = await AsyncPostroom.start(sqlite_url, send, settings=settings())
        message_id = await room.enqueue("+15550001", "u", "hi")
        await asyncio.wait_for(delivered.wait(), 10)
        for _ in range(500):
            if (await room.get(message_id)).status is Status.COMPLETED:
                break
            await asyncio.sleep(0.01)
        assert (await room.get(message_id)).status is Status.COMPLETED
        assert seen == [(message_id, True)]
        await room.stop()

    asyncio.run(main())


def test_broadcast_and_batch_from_the_loop(sqlite_url: str) -> None:
    """`broadcast` and `enqueue_batch` answer every id in order, and each is sent once."""

    async def main() -> None:
        sent: list[tuple[int, str]] = []
        done = asyncio.Event()

        async def send(message: Message) -> None:
            sent.append((message.id, message.user_id))
            if len(sent) == 5:
                done.set()

        room = await AsyncPostroom.start(sqlite_url, send, settings=settings())
        told = await room.broadcast([("+15550001", "a"), ("+15550001", "b"), ("+15550002", "c")], "hi")
        batch = await room.enqueue_batch([Enqueue(phone="+15550003", user_id=u, text="x") for u in "de"])
        await asyncio.wait_for(done.wait(), 10)
        assert sorted(sent) == list(zip(told + batch, "abcde", strict=True))
        await room.stop()

    asyncio.run(main())


def test_coroutine_sender_timeout_cancels_the_task(sqlite_url: str) -> None:
    """A coroutine that outlives the send timeout is cancelled and recorded as retrying."""

    async def main() -> None:
        cancelled = asyncio.Event()

        async def send(message: Message) -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        room = await AsyncPostroom.start(sqlite_url, send, settings=settings(send_timeout=0.2))
        message_id = await room.enqueue("+15550001", "u", "hi", max_attempts=3)
        await asyncio.wait_for(cancelled.wait(), 10)
        for _ in range(500):
            message = await room.get(message_id)
            if message.status is Status.RETRYING:
                break
            await asyncio.sleep(0.01)
        assert message.status is Status.RETRYING
        assert (message.last_error or "").startswith("SendTimeout")
        await room.stop()

    asyncio.run(main())


def test_async_sender_without_a_loop_is_refused(sqlite_url: str) -> None:
    """Starting with an async sender but no loop is a ValidationError, not a silent hang."""

    async def send(message: Message) -> None:
        return None

    with pytest.raises(ValidationError):
        Supervisor.start(database=sqlite_url, sender=send)


def test_forgotten_supervisor_does_not_keep_the_process_alive(tmp_path: Any) -> None:
    """A script that starts postroom and never stops it still exits (and stops it at exit)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = (
        "from supervisor import Supervisor, Enqueue\n"
        f"ref = Supervisor.start(database='sqlite:///{tmp_path}/f.db', sender=lambda m: None)\n"
        "ref.ask(Enqueue(phone='+1', user_id='u', text='x'))\n"
        "print('done', flush=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "done" in result.stdout
    assert threading.active_count() >= 1


def test_a_plain_sender_returning_a_coroutine_without_a_loop_fails_the_message(sqlite_url: str) -> None:
    """A lambda around an `async def`, given to a supervisor with no event loop, sends nothing:
    the message ends `failed` with SenderReturnedAwaitable at the first send, never
    `completed`, and the coroutine is closed rather than left unawaited."""
    ran: list[int] = []

    async def send(message: Message) -> None:
        ran.append(message.id)

    ref = Supervisor.start(sqlite_url, lambda m: send(m), settings=settings())
    message_id = ref.ask(Enqueue(phone="+15550001", user_id="42", text="hi", max_attempts=5))
    eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.FAILED)
    failed = ref.ask(GetMessage(message_id))
    ref.stop()
    assert failed.attempts == 1 and failed.last_error is not None
    assert failed.last_error.startswith("SenderReturnedAwaitable")
    assert ran == []


def test_a_plain_sender_returning_a_coroutine_runs_it_on_the_bots_loop(sqlite_url: str) -> None:
    """With the bot's loop (AsyncPostroom), the coroutine a plain sender returns is awaited on
    that loop; what it raises is the send's outcome, classified by sender_with_adapters."""

    class TelegramAPIError(Exception):
        pass

    class TelegramRetryAfter(TelegramAPIError):  # aiogram's name and attribute
        def __init__(self, retry_after: int) -> None:
            super().__init__("flood")
            self.retry_after = retry_after

    threads: list[int] = []

    async def send(message: Message) -> None:
        threads.append(threading.get_ident())
        if message.text == "flood":
            raise TelegramRetryAfter(120)

    async def main() -> tuple[Message, Message, int]:
        room = await AsyncPostroom.start(sqlite_url, sender_with_adapters(lambda m: send(m)),
                                         settings=settings())
        ok = await room.enqueue("+15550001", "42", "hi")
        flood = await room.enqueue("+15550002", "42", "flood")
        while (await room.get(ok)).status is not Status.COMPLETED:
            await asyncio.sleep(0.01)
        while (await room.get(flood)).last_error is None:
            await asyncio.sleep(0.01)
        answers = await room.get(ok), await room.get(flood)
        await room.stop()
        return *answers, threading.get_ident()

    sent, paused, loop_thread = asyncio.run(main())
    assert sent.status is Status.COMPLETED
    assert paused.last_error is not None and paused.last_error.startswith("RateLimited")
    assert paused.status is Status.PENDING and paused.attempts == 0  # the attempt was given back
    assert set(threads) == {loop_thread}


# -- SystemExit and KeyboardInterrupt from an async sender ------------------------------------


def test_system_exit_and_keyboard_interrupt_from_an_async_sender_retry_and_the_loop_goes_on(
        tmp_path: Path) -> None:
    """In a bot's `asyncio.run()`, an `async def` sender raising SystemExit on one message and
    KeyboardInterrupt on another ends neither the loop nor the bot: both messages are
    `retrying` with their error, and every other message is sent."""
    env = {k: v for k, v in os.environ.items() if k != "POSTROOM_CRASH_AT"}
    env["PYTHONPATH"] = str(ROOT)
    child = subprocess.run(
        [sys.executable, "-m", "tests.integration.async_exit_child", f"sqlite:///{tmp_path}/bot.db"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    seen = json.loads(child.stdout.splitlines()[-1])
    for text, raised in (("exit", "SystemExit"), ("interrupt", "KeyboardInterrupt")):
        assert seen[text]["status"] == "retrying" and seen[text]["attempts"] == 1
        assert seen[text]["last_error"].startswith(raised)
    assert {seen[text]["status"] for text in ("after exit", "after interrupt", "other", "last")} == {
        "completed"}


# -- a loop that closes without stop() ----------------------------------------------------------


def quick_retries() -> SupervisorSettings:
    return settings(backoff=BackoffPolicy(base=0.05))


def forgetful_bot(url: str, closing: str) -> tuple[AsyncPostroom, list[int]]:
    """A bot whose loop ends without `room.stop()`, its sender inside "hang" on that loop and
    "later" waiting behind it; by `asyncio.run` (which cancels the loop's tasks first), or by
    `loop.close()` (which drops them unrun). The room, and the ids of hang and later."""

    async def main() -> tuple[AsyncPostroom, list[int]]:
        entered = asyncio.Event()

        async def send(message: Message) -> None:
            entered.set()
            await asyncio.Event().wait()

        room = await AsyncPostroom.start(url, send, settings=quick_retries())
        ids = [await room.enqueue("+15550001", "u", text) for text in ("hang", "later")]
        await asyncio.wait_for(entered.wait(), 10)
        return room, ids

    if closing == "asyncio.run":
        return asyncio.run(main())
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def next_bot(url: str) -> tuple[int, list[int]]:
    """A new AsyncPostroom on the same database in a new loop, drained: what it left open and
    the ids it sent."""

    async def main() -> tuple[int, list[int]]:
        sent: list[int] = []

        async def send(message: Message) -> None:
            sent.append(message.id)

        room = await AsyncPostroom.start(url, send, settings=quick_retries())
        left = await room.drain(30)
        await room.stop()
        return left, sent

    return asyncio.run(main())


def statuses(url: str, ids: list[int]) -> dict[int, Message]:
    store = Storage(open_database(url))
    try:
        return {message_id: store.get(message_id) for message_id in ids}
    finally:
        store.close()


@pytest.mark.parametrize("closing", ["asyncio.run", "loop.close"])
def test_a_closed_loop_stops_the_supervisor_and_the_next_room_sends_its_messages(
        sqlite_url: str, logs: LogCapture, closing: str) -> None:
    """A loop closed without `room.stop()` stops the supervisor within a bound, said once by
    one error event; its messages are left pending or retrying, none processing; a new
    AsyncPostroom on the same file in the same process starts and sends them."""
    room, (hang, later) = forgetful_bot(sqlite_url, closing)
    eventually(lambda: not room.ref.is_alive(), timeout=10)
    eventually(lambda: logs.events("supervisor.stopped"), timeout=30)  # its database is released
    closed = logs.events("supervisor.loop_closed")
    assert len(closed) == 1 and closed[0]["log_level"] == "error"

    left = statuses(sqlite_url, [hang, later])
    assert left[hang].status is Status.RETRYING and left[hang].attempts == 1
    if closing == "loop.close":  # its send was dropped unrun: ended when the supervisor stopped
        assert closed[0]["sends_ended"] == 1
        assert (left[hang].last_error or "").endswith("the bot's event loop closed before the send ended")
        assert left[later].status is Status.PENDING  # never claimed: the account was released
    else:  # cancelled by asyncio.run; "later" may have been sent before the loop closed
        assert (left[hang].last_error or "").startswith("RuntimeError: the send was cancelled")
        assert left[later].status is not Status.PROCESSING

    open_left, sent = next_bot(sqlite_url)
    assert open_left == 0
    assert hang in sent and sent.count(hang) == 1
    assert all(m.status is Status.COMPLETED for m in statuses(sqlite_url, [hang, later]).values())
    assert len(logs.events("supervisor.loop_closed")) == 1


def test_a_new_room_at_once_after_a_closed_loop_owns_the_database(sqlite_url: str,
                                                                  logs: LogCapture) -> None:
    """A new AsyncPostroom started as soon as the old loop closed, before the old supervisor
    looked at its loop, is not refused: the old one is stopped first, and its messages are sent."""
    room, ids = forgetful_bot(sqlite_url, "asyncio.run")
    open_left, sent = next_bot(sqlite_url)
    assert not room.ref.is_alive()
    assert open_left == 0 and ids[0] in sent
    assert len(logs.events("supervisor.loop_closed")) == 1
