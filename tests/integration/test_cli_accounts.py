"""`postroom status` and `postroom resume` on accounts, on a real SQLite file and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from actors.privacy import mask_phone
from postroom_cli.main import main
from postroom_common import AccountPause, NewMessage, Priority
from storage import Storage, open_database
from supervisor import AccountSuspended, Enqueue, Message
from tests.conftest import eventually
from tests.integration.helpers import cli_globals_restored, quiet_library_logs, start

# The same first three and last two characters: the old mask made them one account.
ALIKE = ("+15551230001", "+15559870001")


@pytest.fixture(autouse=True)
def _isolate_globals() -> Iterator[None]:
    """Stop every actor and undo the CLI's global logging configuration after each test."""
    with cli_globals_restored():
        yield


def _store(url: str) -> Storage:
    store = Storage(open_database(url))
    store.create_schema()
    return store


def _enqueue_rows(url: str, phones: tuple[str, ...]) -> None:
    now = datetime.now(UTC)
    store = _store(url)
    with store.write_transaction():
        store.insert([NewMessage(phone=phone, user_id="u1", text="hi", attachment=None,
                                 priority=Priority.NORMAL, created_at=now, scheduled_at=None,
                                 max_attempts=3, idempotency_key=None) for phone in phones])
    store.close()


def _pause(url: str, phone: str, until: datetime | None) -> None:
    store = _store(url)
    with store.write_transaction():
        store.set_pause(AccountPause(phone, until, "AccountSuspended"), datetime.now(UTC))
    store.close()


def _pauses(url: str) -> list[AccountPause]:
    store = Storage(open_database(url))
    try:
        return store.pauses(datetime.now(UTC))
    finally:
        store.close()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()  # drop what earlier commands printed
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# -- status -----------------------------------------------------------------------------


def test_status_tells_apart_accounts_whose_ends_match(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Two phones alike at both ends show two different masks in the table and the JSON, never in full."""
    _enqueue_rows(database_url, ALIKE)
    _pause(database_url, ALIKE[0], None)
    code, table = _run(capsys, "status", "--database", database_url)
    assert code == 0
    masks = [mask_phone(phone) for phone in ALIKE]
    assert masks[0] != masks[1] and all(mask in table for mask in masks)
    code, text = _run(capsys, "status", "--database", database_url, "--json")
    report = json.loads(text)
    assert sorted(account["account"] for account in report["accounts"]) == sorted(masks)
    assert [pause["account"] for pause in report["paused"]] == [masks[0]]
    assert not any(phone in table + text for phone in ALIKE)


def test_status_unmasked_shows_the_full_numbers(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`status --unmasked` prints whole phone numbers, in the table and in the JSON."""
    _enqueue_rows(database_url, ALIKE)
    _pause(database_url, ALIKE[1], None)
    code, table = _run(capsys, "status", "--database", database_url, "--unmasked")
    assert code == 0 and all(phone in table for phone in ALIKE)
    code, text = _run(capsys, "status", "--database", database_url, "--json", "--unmasked")
    report = json.loads(text)
    assert code == 0
    assert sorted(account["account"] for account in report["accounts"]) == sorted(ALIKE)
    assert [pause["account"] for pause in report["paused"]] == [ALIKE[1]]


@pytest.mark.parametrize("json_output", [False, True], ids=["table", "json"])
def test_status_names_a_status_it_does_not_know_and_exits_2(
        database_url: str, capsys: pytest.CaptureFixture[str], json_output: bool) -> None:
    """A row whose status this version does not know (a newer version wrote it, or a hand edit)
    is a clear error naming it, exit code 2, not a bare ValueError traceback."""
    _enqueue_rows(database_url, ALIKE)
    store = _store(database_url)
    with store.write_transaction():
        store.db.execute_sql("UPDATE message_queue SET status = 'bogus'")
    store.close()
    code, text = _run(capsys, "status", "--database", database_url, *(["--json"] if json_output else []))
    assert code == 2
    assert "StorageError" in text and "'bogus'" in text and "Traceback" not in text


# -- resume -----------------------------------------------------------------------------


@pytest.mark.parametrize("hours", [None, 6], ids=["until-lifted", "for-a-while"])
def test_resume_lifts_a_pause_with_no_supervisor_running(
        database_url: str, hours: int | None, capsys: pytest.CaptureFixture[str]) -> None:
    """`resume` deletes the account's pause row, says so with the phone masked, and exits 0."""
    until = None if hours is None else datetime.now(UTC) + timedelta(hours=hours)
    _pause(database_url, ALIKE[0], until)
    _pause(database_url, ALIKE[1], None)
    code, out = _run(capsys, "resume", ALIKE[0], "--database", database_url)
    assert code == 0
    assert [pause.phone for pause in _pauses(database_url)] == [ALIKE[1]]  # the other one stays
    assert mask_phone(ALIKE[0]) in out and ALIKE[0] not in out


def test_resume_of_an_account_without_a_pause_exits_1(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`resume` of an account that has messages but no pause changes nothing and exits 1."""
    _enqueue_rows(database_url, ALIKE[:1])
    _pause(database_url, ALIKE[1], None)
    code, out = _run(capsys, "resume", ALIKE[0], "--database", database_url)
    assert code == 1 and "no pause" in out
    assert [pause.phone for pause in _pauses(database_url)] == [ALIKE[1]]


def test_resume_on_a_missing_sqlite_file_fails_without_creating_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`resume` on a SQLite file that does not exist exits 2 with an error and creates nothing."""
    missing = tmp_path / "nowhere" / "missing.db"
    code, out = _run(capsys, "resume", ALIKE[0], "--database", f"sqlite:///{missing}")
    assert code == 2 and "no database" in out
    assert not missing.exists() and not missing.parent.exists()


@pytest.mark.parametrize("account", ["", "   ", "+1555\n0001", "+1" + "5" * 80])
def test_resume_refuses_an_account_that_cannot_be_a_phone(
        sqlite_url: str, account: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty, blank, control-character or overlong ACCOUNT is a ValidationError (exit 2)."""
    _pause(sqlite_url, ALIKE[0], None)
    code, out = _run(capsys, "resume", account, "--database", sqlite_url)
    assert code == 2 and "ValidationError" in out
    assert len(_pauses(sqlite_url)) == 1


def test_resume_works_beside_a_running_supervisor(
        sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """With a supervisor holding the SQLite file, `resume` still lifts a suspension until lifted."""
    def revoked(message: Message) -> None:
        raise AccountSuspended("session revoked")

    quiet_library_logs()
    ref = start(sqlite_url, revoked)
    try:
        ref.ask(Enqueue(phone=ALIKE[0], user_id="u1", text="hi"))
        (pause,) = eventually(lambda: _pauses(sqlite_url))
        assert (pause.phone, pause.until) == (ALIKE[0], None)
        code, out = _run(capsys, "resume", ALIKE[0], "--database", sqlite_url)
        assert code == 0 and "Lifted" in out
        assert _pauses(sqlite_url) == []
    finally:
        ref.stop()
