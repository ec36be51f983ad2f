"""The `postroom` command end to end, in process, on a real SQLite file under tmp_path."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.clock import FakeClock
from actors.privacy import mask_phone
from postroom_cli._demo_database import NotADemoDatabase, demo_check
from postroom_cli.main import main
from postroom_cli.status import read_stats
from postroom_common import FINAL_STATUSES, AccountPause, Message, NewMessage, Priority, Status
from storage import Storage, open_database
from supervisor import Enqueue, Supervisor
from tests.integration.helpers import RecordingSender, cli_globals_restored, quiet_library_logs
from tests.integration.test_owner_lock import Child

#: Phones of the "real" queue: the demo's own accounts, so a demo that sent them would show.
REAL_PHONES = [f"+1555{i:07d}" for i in range(1, 6)]


@pytest.fixture(autouse=True)
def _isolate_globals() -> Iterator[None]:
    """Stop every actor and undo the CLI's global logging configuration after each test."""
    with cli_globals_restored():
        yield


def _demo(url: str, *extra: str) -> int:
    return main(["demo", "--database", url, "--accounts", "5", "--latency-ms", "0-1",
                 "--seed", "1", "--timeout", "60", *extra])


def _status_json(url: str, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()  # drop what earlier commands printed
    assert main(["status", "--database", url, "--json"]) == 0
    parsed: dict[str, object] = json.loads(capsys.readouterr().out)
    return parsed


def test_demo_finishes_every_message_and_status_reports_the_same_counts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo ends every message (exit 0) and `status --json` reads the counts it left."""
    url = f"sqlite:///{tmp_path}/demo.db"
    assert _demo(url, "--messages", "200") == 0
    stats = read_stats(url)
    assert stats.total == 200
    assert stats.by_status[Status.COMPLETED] + stats.by_status[Status.FAILED] == 200
    assert stats.by_status[Status.COMPLETED] > 0
    assert "Delivered (completed)" in capsys.readouterr().out
    report = _status_json(url, capsys)
    assert report["total"] == 200
    assert report["by_status"] == {s.value: stats.by_status[s] for s in Status}
    accounts = report["accounts"]
    assert isinstance(accounts, list) and len(accounts) == len(stats.by_account) == 5
    assert sum(account["total"] for account in accounts) == 200


def test_demo_starts_its_own_database_afresh_unless_told_to_keep(
        database_url: str, tmp_path: Path) -> None:
    """On a database it created, a second demo run starts afresh; with --keep it adds to it."""
    neighbour = tmp_path / "postroom.db.bak"
    neighbour.write_text("not the demo's")
    assert _demo(database_url, "--messages", "20") == 0
    assert _demo(database_url, "--messages", "20") == 0
    assert read_stats(database_url).total == 20
    assert _demo(database_url, "--messages", "20", "--keep") == 0
    assert read_stats(database_url).total == 40
    assert neighbour.read_text() == "not the demo's"  # it deletes nothing but its own database


def _real_queue(url: str) -> list[Message]:
    """A queue made by a real supervisor: 50 messages pending, due now by the wall clock."""
    # The supervisor's clock stands still in the past, so it never sends them itself.
    clock = FakeClock(datetime(2020, 1, 1, tzinfo=UTC))
    sender = RecordingSender()
    quiet_library_logs()
    ref = Supervisor.start(url, sender, clock=clock)
    try:
        _enqueue_real(ref, clock, 50)
    finally:
        ref.stop()
    assert sender.calls == []
    return _rows(url)


def _rows(url: str) -> list[Message]:
    store = Storage(open_database(url))
    try:
        return [m for phone in REAL_PHONES for m in store.list_messages(phone, limit=1000)]
    finally:
        store.close()


def _pauses_and_demo_mark(url: str) -> tuple[list[AccountPause], bool]:
    store = Storage(open_database(url))
    try:
        return store.pauses(datetime(2000, 1, 1, tzinfo=UTC)), store.is_demo()
    finally:
        store.close()


@pytest.mark.parametrize("keep", [[], ["--keep"]], ids=["afresh", "keep"])
def test_demo_refuses_a_queue_it_did_not_create(
        database_url: str, keep: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """On a real queue the demo exits 2 naming the database, and writes, sends and deletes nothing."""
    before = _real_queue(database_url)
    assert len(before) == 50 and {m.status for m in before} == {Status.PENDING}
    capsys.readouterr()
    assert _demo(database_url, "--messages", "20", *keep) == 2
    err = capsys.readouterr().err
    assert "not created by the demo" in err and "--database" in err
    assert _rows(database_url) == before
    assert read_stats(database_url).total == 50
    assert _pauses_and_demo_mark(database_url) == ([], False)


def test_demo_refuses_a_sqlite_file_that_is_not_a_queue(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another program's SQLite file is refused and left exactly as it was, journal mode included."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('keep me')")
    db.close()
    before = path.read_bytes()
    assert _demo(f"sqlite:///{path}", "--messages", "20") == 2
    assert str(path) in capsys.readouterr().err
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_demo_does_not_start_afresh_while_a_supervisor_holds_its_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --keep, a demo database that a running supervisor holds is not deleted (exit 2)."""
    url = f"sqlite:///{tmp_path}/demo.db"
    assert _demo(url, "--messages", "20") == 0
    quiet_library_logs()
    ref = Supervisor.start(url, lambda message: None)
    try:
        capsys.readouterr()
        assert _demo(url, "--messages", "20") == 2
        assert "DatabaseLocked" in capsys.readouterr().err
        assert read_stats(url).total == 20
    finally:
        ref.stop()


def _enqueue_real(ref: pykka.ActorRef[Any], clock: FakeClock, count: int) -> None:
    """`count` acknowledged messages, due a day after the supervisor's standing clock."""
    for n in range(count):
        ref.ask(Enqueue(phone=REAL_PHONES[n % 5], user_id=f"user-{n}", text=f"real #{n}",
                        scheduled_at=clock.now() + timedelta(days=1)))


@pytest.mark.parametrize("holder", ["real", "demo"])
def test_demo_on_a_database_a_supervisor_runs_on_exits_locked_having_written_nothing(
        database_url: str, holder: str, capsys: pytest.CaptureFixture[str]) -> None:
    """While any supervisor (a real one, or the demo's own) runs on the demo's database, the demo
    exits 2 with DatabaseLocked, afresh or --keep, and its rows, counts and mark stay as they were."""
    assert _demo(database_url, "--messages", "20") == 0
    clock = FakeClock(datetime(2020, 1, 1, tzinfo=UTC))
    sender = RecordingSender()
    check = {"_demo_check": demo_check(database_url)} if holder == "demo" else {}
    quiet_library_logs()
    ref = Supervisor.start(database_url, sender, clock=clock, **check)
    try:
        _enqueue_real(ref, clock, 30)
        before, stats = _rows(database_url), read_stats(database_url)
        mark = _pauses_and_demo_mark(database_url)
        assert len(before) == 50 and mark[1] is (holder == "demo")
        for keep in ([], ["--keep"]):
            capsys.readouterr()
            assert _demo(database_url, "--messages", "20", *keep) == 2
            assert "DatabaseLocked" in capsys.readouterr().err
            assert _rows(database_url) == before
            assert read_stats(database_url) == stats
            assert _pauses_and_demo_mark(database_url) == mark
    finally:
        ref.stop()
    assert sender.calls == []


def test_demo_on_a_database_another_process_runs_on_exits_locked_having_written_nothing(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A supervisor in another process holds the demo's database: the demo exits 2 with
    DatabaseLocked and every row is still there."""
    assert _demo(database_url, "--messages", "20") == 0
    before = _rows(database_url)
    child = Child(database_url)
    try:
        assert child.line() == "ready" and child.line() == "started"
        capsys.readouterr()
        assert _demo(database_url, "--messages", "20") == 2
        assert "DatabaseLocked" in capsys.readouterr().err
        assert _rows(database_url) == before and len(before) == 20
    finally:
        assert child.stop() == 0


@pytest.mark.parametrize("keep", [[], ["--keep"]], ids=["afresh", "keep"])
def test_demo_refuses_its_database_once_a_real_supervisor_has_run_on_it(
        database_url: str, keep: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A real supervisor removes the demo's mark when it starts: the next demo exits 2 saying why,
    and the real messages are all still there."""
    assert _demo(database_url, "--messages", "20") == 0
    before = _real_queue(database_url)
    assert len(before) == 70
    assert _pauses_and_demo_mark(database_url)[1] is False
    capsys.readouterr()
    assert _demo(database_url, "--messages", "20", *keep) == 2
    assert "a supervisor other than the demo's has run on it" in capsys.readouterr().err
    assert _rows(database_url) == before


def _insert_as_a_script(url: str, count: int) -> None:
    """What a producer or a script does: rows written through `Storage`, no supervisor."""
    now = datetime.now(UTC)
    news = [NewMessage(phone=REAL_PHONES[n % 5], user_id=f"user-{n}", text=f"real #{n}",
                       attachment=None, priority=Priority.NORMAL, created_at=now,
                       scheduled_at=now + timedelta(days=1), max_attempts=3, idempotency_key=None)
            for n in range(count)]
    store = Storage(open_database(url))
    try:
        with store.write_transaction():
            store.insert(news)
    finally:
        store.close()


@pytest.mark.parametrize("keep", [[], ["--keep"]], ids=["afresh", "keep"])
def test_demo_refuses_its_database_once_something_else_wrote_a_message(
        database_url: str, keep: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Messages written without a supervisor leave the mark, but the demo counts them as not its
    own: it exits 2 saying how many, and sends, deletes and writes nothing."""
    assert _demo(database_url, "--messages", "20") == 0
    _insert_as_a_script(database_url, 30)
    before = _rows(database_url)
    assert _pauses_and_demo_mark(database_url)[1] is True
    capsys.readouterr()
    assert _demo(database_url, "--messages", "20", *keep) == 2
    assert "holds 30 message(s) the demo did not write" in capsys.readouterr().err
    assert _rows(database_url) == before
    assert read_stats(database_url).total == 50


def test_the_demo_supervisor_checks_its_database_again_under_its_own_lock(database_url: str) -> None:
    """Rows written between the demo's look and its supervisor's start: the supervisor refuses the
    database before it reads, sends or marks anything, and lets go of it."""
    assert _demo(database_url, "--messages", "20") == 0
    _insert_as_a_script(database_url, 3)
    before = _rows(database_url)
    sender = RecordingSender()
    quiet_library_logs()
    with pytest.raises(NotADemoDatabase, match="holds 3 message"):
        Supervisor.start(database_url, sender, _demo_check=demo_check(database_url))
    assert _rows(database_url) == before and sender.calls == []
    assert _pauses_and_demo_mark(database_url)[1] is True
    ref = Supervisor.start(database_url, sender, clock=FakeClock(datetime(2020, 1, 1, tzinfo=UTC)))
    ref.stop()  # the refused start left the database free


def test_demo_logs_no_rate_limit_warnings_unless_verbose(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rate limits leave stderr quiet by default; with --verbose each one logs account.rate_limited."""
    url = f"sqlite:///{tmp_path}/demo.db"
    capsys.readouterr()
    assert _demo(url, "--messages", "40", "--rate-limit-rate", "0.5", "--failure-rate", "0") == 0
    quiet = capsys.readouterr()
    assert "account.rate_limited" not in quiet.err
    assert "finished" in quiet.out and "sending" not in quiet.out  # the bar's last label
    assert "account pauses" in quiet.out  # the live counters count the pauses
    assert _demo(url, "--messages", "40", "--rate-limit-rate", "0.5", "--failure-rate", "0",
                 "--verbose") == 0
    assert "account.rate_limited" in capsys.readouterr().err


def test_status_on_a_missing_file_fails_without_creating_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`status` on a SQLite file that does not exist exits 2 with an error and creates nothing."""
    missing = tmp_path / "nowhere" / "missing.db"
    assert main(["status", "--database", f"sqlite:///{missing}"]) == 2
    assert "no database" in capsys.readouterr().err
    assert not missing.exists() and not missing.parent.exists()


def test_status_works_beside_a_running_supervisor(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`status` reads a database whose supervisor is running and masks phones in its tables."""
    url = f"sqlite:///{tmp_path}/live.db"
    quiet_library_logs()
    ref = Supervisor.start(url, lambda message: None)
    try:
        for n in range(3):
            ref.ask(Enqueue(phone="+15550001234", user_id=f"u{n}", text="hi"))
        assert _status_json(url, capsys)["total"] == 3
        assert main(["status", "--database", url]) == 0
    finally:
        ref.stop()
    out = capsys.readouterr().out
    assert mask_phone("+15550001234") in out and "+15550001234" not in out


def test_demo_exits_1_when_messages_are_still_open_at_the_timeout(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With a timeout shorter than the scheduled messages' delay, the demo exits 1, its bar "timed out"."""
    url = f"sqlite:///{tmp_path}/demo.db"
    assert _demo(url, "--messages", "200", "--timeout", "0.01") == 1
    assert "timed out" in capsys.readouterr().out
    stats = read_stats(url)
    assert sum(stats.by_status[s] for s in FINAL_STATUSES) < stats.total
