"""A PostgreSQL restart under a running supervisor: it reconnects and goes on by itself.

The restart is a TCP proxy between postroom and the real server, cut and restored: every
session ends, the owner lock's included, as a server restart ends them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from supervisor import (
    AccountSettings,
    Enqueue,
    GetHealth,
    GetStats,
    Status,
    StorageError,
    SupervisorSettings,
)
from tests.conftest import LogCapture, eventually
from tests.integration.helpers import RecordingSender, start_with
from tests.integration.tcp_proxy import TcpProxy, through

pytestmark = pytest.mark.postgres
T = TypeVar("T")


@pytest.mark.timeout(120)
def test_sending_resumes_by_itself_after_the_database_restarts(
        postgres_url: str, proxy: TcpProxy, logs: LogCapture) -> None:
    """Messages acknowledged before a restart are all sent after it, enqueues fail with
    StorageError while the database is away and succeed again once it is back, health is
    degraded meanwhile and ok after, and the owner lock is taken again."""
    gate = threading.Event()
    sender = RecordingSender(lambda m, n: gate.wait(30) and None)
    settings = SupervisorSettings(account=AccountSettings(storage_retry=0.05, idle_timeout=None))
    ref = start_with(through(postgres_url, proxy), sender, settings)
    before = [ref.ask(Enqueue(phone=f"+1555000{i % 5}", user_id="u", text=str(i))) for i in range(50)]
    sender.wait_for(5)  # one send in flight per account, 45 waiting in the database

    proxy.cut()
    with pytest.raises(StorageError):
        ref.ask(Enqueue(phone="+15550009", user_id="u", text="during"))
    assert ref.ask(GetHealth()).degraded
    gate.set()  # the sends in flight end while their outcome cannot be written
    proxy.restore()

    again = Enqueue(phone="+15550009", user_id="u", text="after")
    after = eventually(lambda: _or_none(lambda: ref.ask(again)), timeout=30)
    eventually(lambda: _or_none(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == 51), timeout=60)
    assert not ref.ask(GetHealth()).degraded
    assert set(sender.ids()) == {*before, after}
    assert logs.events("storage.owner_lock_retaken")


def _or_none(ask: Callable[[], T]) -> T | None:
    """The answer, or None while the database is still away (a StorageError)."""
    try:
        return ask()
    except StorageError:
        return None
