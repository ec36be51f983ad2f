"""Suspects: a message in flight at two crashes in a row is sent alone at the next boot.

The database is left as two crashes would leave it (claimed, recovered as interrupted,
claimed again), on a real SQLite file (and PostgreSQL); then a supervisor boots on it. Process-level
poison messages, killed for real, are in test_sender_faults.py.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from postroom_common import AccountPause, Delivery, Message, NewMessage, Priority, Status, ValidationError
from storage import Storage, open_database
from supervisor import AccountSettings, FakeClock, GetStats, SupervisorSettings
from tests.conftest import LogCapture, eventually
from tests.integration.helpers import start, start_with

SUSPECTS = ["+15550001", "+15550002"]  # one suspect each
BYSTANDERS = ["+15550003", "+15550004", "+15550005"]  # ordinary work, five messages each


class TimingSender:
    """Records when each send started and ended; each takes a little while, so sends overlap."""

    def __init__(self) -> None:
        self.sends: list[tuple[str, float, float]] = []  # (text, start, end)
        self._lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        began = time.monotonic()
        time.sleep(0.02)
        with self._lock:
            self.sends.append((message.text, began, time.monotonic()))

    def overlapping(self, text: str) -> list[str]:
        """Texts of the sends that ran at the same time as the (only) send of `text`."""
        with self._lock:
            ((_, began, ended),) = [s for s in self.sends if s[0] == text]
            return [t for t, b, e in self.sends if t != text and b < ended and e > began]


def new(phone: str, text: str) -> NewMessage:
    now = datetime.now(UTC)
    return NewMessage(phone=phone, user_id="u", text=text, attachment=None, priority=Priority.NORMAL,
                      created_at=now, scheduled_at=None, max_attempts=5, idempotency_key=None)


def left_by_two_crashes(url: str, *, first_time: str | None = None, paused: str | None = None,
                        suspected: list[str] = SUSPECTS) -> dict[str, int]:
    """Suspects (one per account of `suspected`) in flight at two crashes, bystanders' work
    pending; ids by text."""
    storage = Storage(open_database(url))
    storage.create_schema()
    try:
        with storage.write_transaction():
            news = [new(p, f"suspect {p}") for p in suspected]
            news += [new(p, f"work {p} {n}") for p in BYSTANDERS for n in range(5)]
            if first_time is not None:
                news.append(new(first_time, "first time"))
            ids = dict(zip([n.text for n in news], storage.insert(news), strict=True))
        suspects = [ids[f"suspect {p}"] for p in suspected]
        now = datetime.now(UTC)
        with storage.write_transaction():
            storage.claim(suspects, now)  # in flight at the first crash
        with storage.write_transaction():
            storage.recover_interrupted(Delivery.AT_LEAST_ONCE, now)  # the boot after it
        with storage.write_transaction():
            storage.claim(suspects + ([ids["first time"]] if first_time else []), now)  # the second
            if paused is not None:
                storage.set_pause(AccountPause(paused, now + timedelta(hours=1), "RateLimited"), now)
        return {text: int(i) for text, i in ids.items()}
    finally:
        storage.close()


def test_each_suspect_is_sent_alone_then_everything_else(database_url: str, logs: LogCapture) -> None:
    """Each suspect's send overlaps no other send; then every account sends as usual (SQLite
    and PostgreSQL)."""
    ids = left_by_two_crashes(database_url, first_time="+15550006")
    sender = TimingSender()
    ref = start(database_url, sender)
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == len(ids))
    for phone in SUSPECTS:
        assert sender.overlapping(f"suspect {phone}") == []
    alone = [e["message_id"] for e in logs.events("quarantine.sending_alone")]
    assert alone == [ids[f"suspect {p}"] for p in SUSPECTS]  # only these, in id order
    suspects_done = max(end for text, _, end in sender.sends if text.startswith("suspect"))
    assert all(began >= suspects_done for text, began, _ in sender.sends
               if not text.startswith("suspect"))  # the others only after the suspects
    assert logs.events("quarantine.finished")



def test_a_crash_with_many_suspects_is_an_ordinary_crash(database_url: str, logs: LogCapture) -> None:
    """More suspects than `max_suspects_alone` (a crash storm with every account sending): none
    is sent alone, and every account sends at once, even while a suspect's send hangs (SQLite
    and PostgreSQL)."""
    storm = [f"+1555010{n:02d}" for n in range(12)]
    ids = left_by_two_crashes(database_url, suspected=storm)
    hung = f"suspect {storm[0]}"
    inside, release = threading.Event(), threading.Event()
    timing = TimingSender()

    def sender(message: Message) -> None:
        if message.text == hung:
            inside.set()
            release.wait(30)
        timing(message)

    settings = SupervisorSettings(account=AccountSettings(idle_timeout=None), max_suspects_alone=3)
    ref = start_with(database_url, sender, settings)
    try:
        assert inside.wait(10)
        eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == len(ids) - 1)
    finally:
        release.set()
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == len(ids))
    assert logs.events("quarantine.sending_alone") == []
    (skipped,) = logs.events("quarantine.skipped")
    assert (skipped["suspects"], skipped["max_suspects_alone"]) == (len(storm), 3)


def test_the_first_boot_after_the_upgrade_knows_the_suspects_of_a_previous_database(
        database_url: str, logs: LogCapture) -> None:
    """A database the previous version left after two crashes (no `interrupted` column, the
    suspects known only by their last_error) is migrated at start, and its suspects are
    still sent alone (SQLite and PostgreSQL)."""
    ids = left_by_two_crashes(database_url)
    db = open_database(database_url)
    db.execute_sql("ALTER TABLE message_queue DROP COLUMN interrupted")  # as the previous version made it
    db.execute_sql("DELETE FROM postroom_meta")  # which had no schema version
    db.close()
    sender = TimingSender()
    ref = start(database_url, sender)
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == len(ids))
    assert [e["message_id"] for e in logs.events("quarantine.sending_alone")] == [
        ids[f"suspect {p}"] for p in SUSPECTS]
    for phone in SUSPECTS:
        assert sender.overlapping(f"suspect {phone}") == []

def test_an_interruption_once_is_no_suspect(sqlite_url: str, logs: LogCapture) -> None:
    """In flight at one crash only (the usual bystander of a crash): retried as usual."""
    storage = Storage(open_database(sqlite_url))
    storage.create_schema()
    with storage.write_transaction():
        (only,) = storage.insert([new("+15550001", "once")])
    with storage.write_transaction():
        storage.claim([only], datetime.now(UTC))
    storage.close()
    sender = TimingSender()
    ref = start(sqlite_url, sender)
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == 1)
    assert logs.events("quarantine.started") == []
    (recovered,) = logs.events("supervisor.recovered")
    assert (recovered["interrupted"], recovered["suspects"]) == (1, 0)


def test_a_suspect_that_cannot_be_sent_now_holds_nobody_up(sqlite_url: str, logs: LogCapture) -> None:
    """Its account is paused for an hour: the boot goes on at once, and the suspect waits
    for the pause like any message of that account."""
    paused = SUSPECTS[0]
    ids = left_by_two_crashes(sqlite_url, paused=paused)
    sender = TimingSender()
    ref = start(sqlite_url, sender)
    others = len(ids) - 1
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == others)
    assert [text for text, _, _ in sender.sends].count(f"suspect {paused}") == 0
    assert sender.overlapping(f"suspect {SUSPECTS[1]}") == []
    stats: Any = ref.ask(GetStats())
    assert stats.by_account[paused] == {Status.RETRYING: 1}


def test_a_suspect_that_hangs_holds_the_others_up_for_suspect_timeout_only(
        sqlite_url: str, logs: LogCapture) -> None:
    """Its send never returns: after `suspect_timeout` (120 s on the supervisor's clock) the
    other accounts start anyway."""
    ids = left_by_two_crashes(sqlite_url)
    first = f"suspect {SUSPECTS[0]}"
    inside, release = threading.Event(), threading.Event()
    timing = TimingSender()

    def sender(message: Message) -> None:
        if message.text == first:
            inside.set()
            release.wait(30)
        timing(message)

    clock = FakeClock(datetime.now(UTC))
    ref = start(sqlite_url, sender, clock=clock)
    try:
        assert inside.wait(10)
        time.sleep(0.2)  # a while on the real clock: nobody else sends meanwhile
        assert timing.sends == []
        clock.advance(121)
        waiting = len(ids) - 1  # all but the hung one
        eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == waiting)
    finally:
        release.set()
    eventually(lambda: ref.ask(GetStats()).by_status[Status.COMPLETED] == len(ids))
    assert [e["message_id"] for e in logs.events("quarantine.sending_alone")] == [
        ids[f"suspect {p}"] for p in SUSPECTS]


def test_a_negative_max_suspects_alone_is_refused() -> None:
    """`max_suspects_alone` below 0 is refused with ValidationError when the settings are made."""
    with pytest.raises(ValidationError, match="max_suspects_alone"):
        SupervisorSettings(max_suspects_alone=-1)
