"""`Drain`: a script waits until what it queued is sent, and hears how much is left."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

import pykka
import pytest

from actors.errors import RateLimited
from supervisor import (
    AsyncPostroom,
    CancelMessage,
    Drain,
    Enqueue,
    EnqueueBatch,
    GetStats,
    Message,
    Status,
    SupervisorStopped,
    ValidationError,
)
from tests.conftest import eventually
from tests.integration.helpers import RecordingSender, start


def test_drain_answers_once_every_message_is_finished(sqlite_url: str) -> None:
    """Drain answers 0 only when nothing is pending, retrying or processing any more."""
    sender = RecordingSender(lambda m, n: time.sleep(0.002))
    ref = start(sqlite_url, sender)
    ref.ask(EnqueueBatch([Enqueue(phone=f"+1555000{i % 5}", user_id="u", text=str(i)) for i in range(300)]))
    assert ref.ask(Drain(timeout=60)) == 0
    stats = ref.ask(GetStats())
    assert stats.by_status[Status.COMPLETED] == 300 == len(sender.calls)


def test_drain_waits_for_the_enqueues_told_just_before_it(sqlite_url: str) -> None:
    """Enqueues sent by `tell` go straight to the writer; a Drain from the same thread right
    after them still waits for every one of them, not only for what was committed already."""
    sender = RecordingSender()
    ref = start(sqlite_url, sender)
    for i in range(3000):
        ref.tell(Enqueue(phone=f"+1555000{i % 10}", user_id="u", text=str(i)))
    assert ref.ask(Drain(timeout=60)) == 0
    assert ref.ask(GetStats()).by_status[Status.COMPLETED] == 3000 == len(sender.calls)


def test_drain_gives_up_at_its_timeout_and_says_what_is_left(sqlite_url: str) -> None:
    """A message that cannot go (its account rate-limited for ten minutes) keeps Drain waiting
    until its timeout, and no longer: it answers how many are still open."""
    ref = start(sqlite_url, RecordingSender(lambda m, n: (_ for _ in ()).throw(RateLimited(600))))
    ref.ask(Enqueue(phone="+15550001", user_id="u", text="stuck"))
    started = time.monotonic()
    assert ref.ask(Drain(timeout=0.3)) == 1
    assert 0.3 <= time.monotonic() - started < 5


@pytest.mark.parametrize("timeout", [-1.0, math.nan, math.inf, "soon", True,
                                     pytest.param(10**400, id="10**400"), 1e12])
def test_a_bad_drain_timeout_is_refused(sqlite_url: str, timeout: object) -> None:
    """A negative, infinite, non-numeric or huge timeout (an int no float holds raised
    OverflowError; above 100 years) is a ValidationError."""
    ref = start(sqlite_url, RecordingSender())
    with pytest.raises(ValidationError, match="Drain timeout"):
        ref.ask(Drain(timeout=timeout))  # type: ignore[arg-type]


def test_a_drain_still_waiting_when_the_supervisor_stops_gets_an_error(sqlite_url: str) -> None:
    """Stopping the supervisor answers a waiting Drain with SupervisorStopped, not silence."""
    ref = start(sqlite_url, RecordingSender(lambda m, n: (_ for _ in ()).throw(RateLimited(600))))
    ref.ask(Enqueue(phone="+15550001", user_id="u", text="stuck"))
    waiting = ref.ask(Drain(), block=False)
    with pytest.raises(pykka.Timeout):
        waiting.get(timeout=0.2)
    ref.stop()
    with pytest.raises(SupervisorStopped):
        waiting.get(timeout=10)


def test_drain_from_asyncio(sqlite_url: str) -> None:
    """`await room.drain()` waits on the loop without blocking it."""

    async def send(message: Message) -> None:
        await asyncio.sleep(0.001)

    async def main() -> int:
        room = await AsyncPostroom.start(sqlite_url, send)
        for i in range(50):
            await room.enqueue("+15550001", "u", str(i))
        left = await room.drain(timeout=30)
        await room.stop()
        return left

    assert asyncio.run(main()) == 0


def test_drains_whose_callers_gave_up_leave_no_waiter(sqlite_url: str) -> None:
    """Thousands of Drain asks abandoned by their callers (a future dropped, an ask that timed
    out) are forgotten, so the supervisor stops counting for them; a drain still held waits
    on and is answered."""
    ref = start(sqlite_url, RecordingSender(lambda m, n: (_ for _ in ()).throw(RateLimited(600))))
    stuck = ref.ask(Enqueue(phone="+15550001", user_id="u", text="stuck"))
    kept = ref.ask(Drain(), block=False)
    for _ in range(2000):
        ref.ask(Drain(), block=False)  # the future is dropped at once
    for _ in range(20):
        with contextlib.suppress(pykka.Timeout):
            ref.ask(Drain(), timeout=0.001)
    proxy = ref.proxy()
    eventually(lambda: proxy.drains_waiting.get() == 1)
    ref.ask(CancelMessage(stuck))
    assert kept.get(timeout=10) == 0
    eventually(lambda: proxy.drains_waiting.get() == 0)


def test_an_asyncio_drain_cancelled_by_its_timeout_leaves_no_waiter(sqlite_url: str) -> None:
    """`asyncio.wait_for(room.drain(), ...)` that times out cancels the awaited future: the
    supervisor forgets that drain."""

    def limited(message: Message) -> None:
        raise RateLimited(600)

    async def main() -> None:
        room = await AsyncPostroom.start(sqlite_url, limited)
        await room.enqueue("+15550001", "u", "stuck")
        for _ in range(50):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(room.drain(), 0.001)
        proxy = room.ref.proxy()
        await asyncio.to_thread(eventually, lambda: proxy.drains_waiting.get() == 0)
        await room.stop()

    asyncio.run(main())
