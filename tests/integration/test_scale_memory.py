"""Many accounts cost nothing while they have nothing to do: at boot, and after they idle out."""

from __future__ import annotations

import contextlib
import gc
import threading
from datetime import timedelta

import pykka
import pytest

from actors.account import AccountActor
from postroom_common import NewMessage, Priority
from storage import Storage, open_database
from supervisor import Enqueue, EnqueueBatch, FakeClock, GetHealth, GetMessage, GetStats, Status, Supervisor
from tests.conftest import eventually
from tests.integration.helpers import RecordingSender, start

ACCOUNTS = 2_000


def test_a_boot_with_only_future_work_starts_no_account(sqlite_url: str) -> None:
    """2,000 accounts whose messages are due tomorrow start no actor at boot; a new message is
    sent at once, and tomorrow every account sends its own."""
    clock = FakeClock()
    store = Storage(open_database(sqlite_url))
    store.create_schema()
    tomorrow = clock.now() + timedelta(days=1)
    with store.write_transaction():
        store.insert([NewMessage(f"+1{n:07d}", "u", "later", None, Priority.NORMAL, clock.now(),
                                 tomorrow, 5, None) for n in range(ACCOUNTS)])
    store.close()
    sender = RecordingSender()
    ref = start(sqlite_url, sender, clock=clock)
    assert ref.ask(GetHealth()).accounts_running == 0
    now_id = ref.ask(Enqueue(phone="+19999999", user_id="u", text="now"))
    eventually(lambda: ref.ask(GetMessage(now_id)).status is Status.COMPLETED)
    assert ref.ask(GetHealth()).accounts_running == 1 and sender.ids() == [now_id]
    clock.advance(timedelta(days=1).total_seconds())
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == ACCOUNTS + 1, timeout=60)


def test_accounts_that_idle_out_leave_nothing_behind(sqlite_url: str) -> None:
    """Once 2,000 accounts have sent and stopped while idle, no account actor is left in
    memory, and the supervisor keeps no entry for any of them."""
    clock = FakeClock()
    sender = RecordingSender()
    ref = start(sqlite_url, sender, clock=clock, idle_timeout=30)
    for n in range(0, ACCOUNTS, 500):
        ref.ask(EnqueueBatch([Enqueue(phone=f"+1{k:07d}", user_id="u", text="hi")
                              for k in range(n, n + 500)]))
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == ACCOUNTS, timeout=60)
    for _ in range(20):  # each account arms its idle timer a moment after its send is recorded
        clock.advance(31)
        with contextlib.suppress(AssertionError):
            eventually(lambda: ref.ask(GetHealth()).accounts_running == 0, timeout=1)
            break
    assert ref.ask(GetHealth()).accounts_running == 0
    proxy = ref.proxy()
    eventually(lambda: len(proxy.directory.get()) == 0 and proxy.keeper.get().kept == 0)
    eventually(lambda: not pykka.ActorRegistry.get_by_class(AccountActor))  # stops are asynchronous

    def left_in_memory() -> list[AccountActor]:
        gc.collect()  # a turn queued for a stopped actor may hold it a moment longer (a loaded machine)
        return [o for o in gc.get_objects()
                if isinstance(o, AccountActor) and o.deps.supervisor.actor_urn == ref.actor_urn]

    eventually(lambda: not left_in_memory(), timeout=10, interval=0.2)


def test_supervisors_started_and_stopped_leave_no_thread_behind(sqlite_url: str) -> None:
    """A host that starts and stops a supervisor again and again (a reconnect loop, a test
    suite) keeps the same threads: the timer thread is shared, the pools are stopped."""

    def cycle() -> None:
        ref = Supervisor.start(database=sqlite_url, sender=RecordingSender())
        message_id = ref.ask(Enqueue(phone="+15550001", user_id="u", text="hi"))
        eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.COMPLETED)
        ref.stop()

    cycle()  # the process-wide timer thread starts with the first supervisor
    eventually(lambda: not _pool_threads(), timeout=15)
    before = _postroom_threads()
    for _ in range(5):
        cycle()
    eventually(lambda: not _pool_threads(), timeout=15)  # the runtime's and the senders' exit
    assert _postroom_threads() == before


def _postroom_threads() -> list[threading.Thread]:
    return sorted((t for t in threading.enumerate() if t.name.startswith("postroom")), key=id)


def _pool_threads() -> list[threading.Thread]:
    return [t for t in _postroom_threads() if t.name != "postroom-timers"]


def test_a_burst_of_accounts_idling_out_gives_their_memory_back(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once enough accounts have idled out, the supervisor has the allocator give its free pages
    back to the system (malloc_trim on glibc), off its own turn; once per burst."""
    import supervisor

    trims = threading.Semaphore(0)
    monkeypatch.setattr(supervisor, "TRIM_AFTER_IDLE", 10)
    monkeypatch.setattr(supervisor, "release_free_memory", lambda: bool(trims.release()) or True)
    ref = start(sqlite_url, RecordingSender(), idle_timeout=0.1)
    try:
        ref.ask(EnqueueBatch([Enqueue(phone=f"+1{n:07d}", user_id="u", text="x") for n in range(25)]))
        eventually(lambda: ref.ask(GetHealth()).accounts_running == 0)
        assert trims.acquire(timeout=5)
        assert not trims.acquire(timeout=0.5)  # 15 more idled out within TRIM_INTERVAL: not again
    finally:
        ref.stop()
