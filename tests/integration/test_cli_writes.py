"""The operator's write commands (`enqueue`, `requeue`, `cancel`, `pause`, `resume`, `cleanup`)
beside a running supervisor, on a real SQLite file and PostgreSQL: each writes through its own
connection in one transaction with its announcement in the change feed, and the running
owner obeys without a restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.account import AccountSettings
from actors.privacy import mask_phone
from postroom_cli.main import main
from postroom_common import NewMessage, Priority
from storage import Storage, open_database
from supervisor import (
    Drain,
    Enqueue,
    EnqueueBatch,
    GetHealth,
    GetMessage,
    Message,
    PermanentError,
    Status,
    Supervisor,
    SupervisorSettings,
)
from tests.conftest import eventually
from tests.integration.helpers import (
    RecordingSender,
    account_ref,
    cli_globals_restored,
    quiet_library_logs,
    start_with,
)

ROOT = Path(__file__).resolve().parents[2]
PHONE, OTHER = "+15550001234", "+15550009876"


@pytest.fixture(autouse=True)
def _isolate_globals() -> Iterator[None]:
    """Stop every actor and undo the CLI's global logging configuration after each test."""
    with cli_globals_restored():
        yield


# -- helpers ------------------------------------------------------------------------------


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`postroom ARGV` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, err = _run(capsys, *argv, "--json")
    assert out.strip(), err
    return code, json.loads(out)


@contextmanager
def _running(url: str, sender: Callable[[Message], Any],
             **settings: Any) -> Iterator[pykka.ActorRef[Supervisor]]:
    """A supervisor sending in this process, standing for the bot beside the commands."""
    quiet_library_logs()
    account = replace(AccountSettings(), idle_timeout=None)
    ref = start_with(url, sender, SupervisorSettings(account=account, **settings))
    try:
        yield ref
    finally:
        ref.stop()


@contextmanager
def _store(url: str) -> Iterator[Storage]:
    store = Storage(open_database(url))
    try:
        yield store
    finally:
        store.close_all()


def _insert(url: str, phone: str, count: int, **fields: Any) -> list[int]:
    """Rows written straight to the database (its schema created), as a producer would."""
    values = {"user_id": "u1", "text": "hi", "attachment": None, "priority": Priority.NORMAL,
              "created_at": datetime.now(UTC), "scheduled_at": None, "max_attempts": 3,
              "idempotency_key": None, **fields}
    with _store(url) as store:
        store.create_schema()
        with store.write_transaction():
            return store.insert([NewMessage(phone=phone, **values) for _ in range(count)])


def _sql(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with _store(url) as store:
        mark = "?" if url.startswith("sqlite") else "%s"
        with store.write_transaction():
            cursor = store.db.execute_sql(sql.replace("?", mark), params)
            return list(cursor.fetchall()) if cursor.description else []


def _fail(url: str, ids: list[int], error: str, finished_days_ago: float = 0) -> None:
    """Mark rows failed with `error`, as a sender's permanent error leaves them."""
    at = int((datetime.now(UTC) - timedelta(days=finished_days_ago)).timestamp() * 1_000_000)
    for message_id in ids:
        _sql(url, "UPDATE message_queue SET status = 'failed', attempts = 1, last_error = ?,"
                  " completed_at = ? WHERE id = ?", (error, at, message_id))


def _snapshot(url: str) -> list[list[tuple[Any, ...]]]:
    """Everything a write command could change."""
    return [_sql(url, "SELECT id, status, attempts, available_at, completed_at, updated_at"
                      " FROM message_queue ORDER BY id"),
            _sql(url, "SELECT seq, kind FROM postroom_changes ORDER BY seq"),
            _sql(url, "SELECT phone, paused_until, reason FROM account_state ORDER BY phone")]


def _changes(url: str) -> list[tuple[Any, ...]]:
    return _sql(url, "SELECT kind, phone, first_id, last_id FROM postroom_changes ORDER BY seq")


def _status(ref: pykka.ActorRef[Supervisor], message_id: int) -> Status:
    return ref.ask(GetMessage(message_id)).status


# -- enqueue ------------------------------------------------------------------------------


def test_enqueue_beside_a_running_supervisor_is_sent(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`enqueue` prints the id once committed and the running owner sends it; a repeated key
    prints the first id; --at holds it; the options reach the row."""
    sender = RecordingSender()
    db = ("--database", database_url)
    with _running(database_url, sender) as ref:
        code, sent = _json(capsys, "enqueue", "--account", PHONE, "--to", "u1", "--text", "hi", *db)
        assert code == 0 and sent["account"] == mask_phone(PHONE)
        eventually(lambda: sender.ids() == [sent["id"]])
        keyed = [_json(capsys, "enqueue", "--account", mask_phone(PHONE), "--to", "u2", "--text", "k",
                       "--key", "order-7", "--priority", "high", "--attachment", "file-1",
                       "--max-attempts", "2", *db)[1]["id"] for _ in range(2)]
        assert keyed[0] == keyed[1]
        code, later = _json(capsys, "enqueue", "--account", OTHER, "--to", "u3", "--text", "soon",
                            "--at", "1h", *db)
        eventually(lambda: sender.ids() == [sent["id"], keyed[0]])
        held = ref.ask(GetMessage(later["id"]))
        assert held.status is Status.PENDING and held.available_at > datetime.now(UTC) + timedelta(minutes=59)
        row = ref.ask(GetMessage(keyed[0]))
        assert (row.priority, row.attachment, row.max_attempts, row.phone) == (
            Priority.HIGH, "file-1", 2, PHONE)
        code, out, _ = _run(capsys, "enqueue", "--account", PHONE, "--to", "u4", "--text", "x", *db)
        assert code == 0 and "Enqueued message" in out and PHONE not in out


@pytest.mark.parametrize("argv", [
    ["--at", "tomorrow"], ["--at", "2030-01-01T09:00:00"], ["--at", "5x"], ["--at", "-5m"],
    ["--account", mask_phone("+19990000000")], ["--text", ""], ["--max-attempts", "0"],
], ids=["at-words", "at-local", "at-unit", "at-negative", "unknown-mask", "empty", "attempts"])
def test_enqueue_refuses_bad_input_before_writing(
        sqlite_url: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --at, a mask that is no account's or a message the door refuses: exit 2, a typed
    error, nothing written."""
    _insert(sqlite_url, PHONE, 1)
    options = {"--account": PHONE, "--to": "u1", "--text": "hi"}
    options.update(zip(argv[::2], argv[1::2], strict=True))
    code, _, err = _run(capsys, "enqueue", *[f"{k}={v}" for k, v in options.items()],
                        "--database", sqlite_url)
    assert code == 2 and "ValidationError" in err
    assert len(_sql(sqlite_url, "SELECT id FROM message_queue")) == 1 and _changes(sqlite_url) == []


# -- requeue ------------------------------------------------------------------------------


def test_requeue_sends_failed_messages_again_without_a_restart(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Failed messages requeued by account and error, or by id, are sent by the running owner
    within moments; others stay failed; a message that is not failed exits 1."""
    failing = threading.Event()
    failing.set()

    def refuse(message: Message, call: int) -> None:
        if failing.is_set():
            raise PermanentError("quota exceeded" if message.phone == PHONE else "blocked by user")

    sender = RecordingSender(refuse)
    db = ("--database", database_url)
    with _running(database_url, sender) as ref:
        mine = [ref.ask(Enqueue(phone=PHONE, user_id=str(n), text="a")) for n in range(3)]
        others = [ref.ask(Enqueue(phone=OTHER, user_id=str(n), text="b")) for n in range(2)]
        eventually(lambda: all(_status(ref, i) is Status.FAILED for i in mine + others))
        failing.clear()
        code, done = _json(capsys, "requeue", "--account", mask_phone(PHONE), "--error-match", "quota", *db)
        assert (code, done["requeued"]) == (0, 3)
        eventually(lambda: all(_status(ref, i) is Status.COMPLETED for i in mine))
        assert [_status(ref, i) for i in others] == [Status.FAILED] * 2
        code, done = _json(capsys, "requeue", str(others[0]), *db)
        assert (code, done["requeued"], done["account"]) == (0, 1, mask_phone(OTHER))
        eventually(lambda: _status(ref, others[0]) is Status.COMPLETED)
        code, done = _json(capsys, "requeue", "--error-match", "blocked", *db)
        assert (code, done["requeued"]) == (0, 1)
        eventually(lambda: _status(ref, others[1]) is Status.COMPLETED)
        code, out, _ = _run(capsys, "requeue", str(mine[0]), *db)
        assert code == 1 and "completed" in out
    assert sorted(sender.ids()) == sorted([*mine, *others] * 2)


def test_requeue_in_chunks_announces_each_chunk(
        database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A bulk requeue writes a chunk per transaction, each announcing its id range; every
    matching row ends pending with fresh attempts, the others untouched."""
    monkeypatch.setattr("postroom_cli._bulk.CHUNK", 3)
    ids = _insert(database_url, PHONE, 7)
    _fail(database_url, ids, "TransientError: 503")
    kept = _insert(database_url, OTHER, 1)
    _fail(database_url, kept, "TransientError: 503")
    code, done = _json(capsys, "requeue", "--account", PHONE, "--database", database_url)
    assert (code, done["requeued"]) == (0, 7)
    assert _changes(database_url) == [("requeued", None, ids[0], ids[2]), ("requeued", None, ids[3], ids[5]),
                                      ("requeued", None, ids[6], ids[6])]
    rows = _sql(database_url, "SELECT id, status, attempts, completed_at FROM message_queue ORDER BY id")
    assert rows == [(i, "pending", 0, None) for i in ids] + [rows[-1]] and rows[-1][1] == "failed"


def test_an_error_match_is_an_exact_substring(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--error-match finds its text as it is, case and all: `%` and `_` are no wildcards."""
    ids = _insert(database_url, PHONE, 3)
    for message_id, error in zip(ids, ["HTTP 429: 50% quota", "HTTP 429: 50x quota", "http 429: 50% QUOTA"],
                                 strict=True):
        _fail(database_url, [message_id], error)
    for text, count in [("50%", 2), ("50_", 0), ("QUOTA", 1), ("429: 50", 3), ("%", 2)]:
        code, report = _json(capsys, "requeue", "--error-match", text, "--dry-run",
                             "--database", database_url)
        assert (code, report["requeued"]) == (0, count), text


# -- cancel -------------------------------------------------------------------------------


def test_cancel_of_a_message_being_sent_exits_1(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`cancel ID` of the message in flight says it is already being sent (exit 1, not
    cancelled, sent); of a pending one cancels it, never sent afterwards."""
    release = threading.Event()
    sender = RecordingSender(lambda m, n: release.wait(10) if m.text == "first" else None)
    db = ("--database", database_url)
    try:
        with _running(database_url, sender) as ref:
            first = ref.ask(Enqueue(phone=PHONE, user_id="1", text="first"))
            doomed = ref.ask(Enqueue(phone=PHONE, user_id="2", text="doomed"))
            last = ref.ask(Enqueue(phone=PHONE, user_id="3", text="last"))
            sender.wait_for(1)
            code, out, _ = _run(capsys, "cancel", str(first), *db)
            assert code == 1 and "already being sent: it will not be cancelled" in out
            code, done = _json(capsys, "cancel", str(doomed), *db)
            assert (code, done["cancelled"], done["status"]) == (0, 1, "cancelled")
            release.set()
            assert ref.ask(Drain(timeout=15)) == 0
            assert sender.ids() == [first, last] and _status(ref, doomed) is Status.CANCELLED
    finally:
        release.set()


def test_cancel_racing_a_running_account_is_never_sent_afterwards(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`cancel --account` while the account sends: every message it cancelled is never sent;
    only messages it found in flight may be sent after it returned, and it counts them."""
    sender = RecordingSender(lambda m, n: time.sleep(0.002))  # a platform's round trip
    with _running(database_url, sender) as ref:
        ids = ref.ask(EnqueueBatch([Enqueue(phone=PHONE, user_id=str(n), text="t") for n in range(300)]))
        sender.wait_for(5)
        code, done = _json(capsys, "cancel", "--account", PHONE, "--database", database_url)
        sent_by_then = len(sender.calls)
        assert ref.ask(Drain(timeout=15)) == 0
        statuses = {i: _status(ref, i) for i in ids}
    cancelled = {i for i, status in statuses.items() if status is Status.CANCELLED}
    assert code == 0 and done["cancelled"] == len(cancelled) > 0
    assert not cancelled & set(sender.ids())
    late = sender.ids()[sent_by_then:]  # claimed before the cancel reached them, and reported
    assert len(late) <= done["already_being_sent"]
    assert len(cancelled) + len(set(sender.ids())) == len(ids)


# -- pause and resume ------------------------------------------------------------------------


def test_pause_holds_before_the_next_send(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Once `pause` has returned, no new send of the account begins (the one in flight ends)."""
    release = threading.Event()
    sender = RecordingSender(lambda m, n: release.wait(10) if m.text == "first" else None)
    try:
        with _running(database_url, sender) as ref:
            first = ref.ask(Enqueue(phone=PHONE, user_id="0", text="first"))
            rest = [ref.ask(Enqueue(phone=PHONE, user_id=str(n), text="t")) for n in range(1, 5)]
            sender.wait_for(1)
            code, _, err = _run(capsys, "pause", PHONE, "--database", database_url)
            release.set()  # the send in flight ends at once: the next claim follows at once
            assert code == 0, err
            eventually(lambda: _status(ref, first) is Status.COMPLETED)
            _barrier(ref, capsys, database_url, sender)
            assert sender.ids(PHONE) == [first]
            assert _run(capsys, "resume", PHONE, "--database", database_url)[0] == 0
            eventually(lambda: sender.ids(PHONE) == [first, *rest])
    finally:
        release.set()


def _barrier(ref: pykka.ActorRef[Supervisor], capsys: pytest.CaptureFixture[str], url: str,
             sender: RecordingSender) -> None:
    """Wait until the owner has read the feed past everything announced so far: a message of
    another account enqueued now is sent."""
    code, marker = _json(capsys, "enqueue", "--account", OTHER, "--to", "m", "--text", "marker",
                         "--database", url)
    assert code == 0
    eventually(lambda: marker["id"] in sender.ids())


@pytest.mark.parametrize("duration", [None, "2s"], ids=["until-lifted", "for-a-while"])
def test_pause_and_resume_reach_the_running_owner_through_the_feed(
        database_url: str, duration: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    """An account paused from the command line sends nothing until `resume` (the periodic read
    of pauses off: the announcement alone tells the owner) or the end of --for."""
    sender = RecordingSender()
    db = ("--database", database_url)
    with _running(database_url, sender, pause_check_interval=None) as ref:
        first = ref.ask(Enqueue(phone=PHONE, user_id="0", text="first"))
        eventually(lambda: sender.ids() == [first])
        for_ = ["--for", duration] if duration else []
        code, paused = _json(capsys, "pause", mask_phone(PHONE), *db, *for_)
        assert code == 0 and paused["account"] == mask_phone(PHONE) and paused["replaced"] is None
        assert (paused["until"] == "lifted") == (duration is None)
        _barrier(ref, capsys, database_url, sender)
        held = [ref.ask(Enqueue(phone=PHONE, user_id=str(n), text="t")) for n in range(3)]
        _barrier(ref, capsys, database_url, sender)
        assert sender.ids(PHONE) == [first] and ref.ask(GetHealth()).parked_accounts == ()
        if duration is None:
            code, lifted = _json(capsys, "resume", PHONE, *db)
            assert (code, lifted["lifted"], lifted["was_until"]) == (0, True, "lifted")
        eventually(lambda: sender.ids(PHONE) == [first, *held])


def test_resume_restarts_a_parked_account(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An account its running supervisor parked (a crash storm) is restarted by `postroom
    resume` through the database, as `ResumeAccount` does, and sends what waited."""
    sender = RecordingSender()
    with _running(database_url, sender, max_restarts=0, restart_period=60) as ref:
        first = ref.ask(Enqueue(phone=PHONE, user_id="0", text="first"))
        eventually(lambda: sender.ids() == [first])
        account_ref(PHONE).tell("an unknown message: the actor raises")
        eventually(lambda: ref.ask(GetHealth()).parked_accounts == (mask_phone(PHONE),))
        waiting = ref.ask(Enqueue(phone=PHONE, user_id="1", text="waits"))
        _barrier(ref, capsys, database_url, sender)
        assert _status(ref, waiting) is Status.PENDING
        code, out, _ = _run(capsys, "resume", PHONE, "--database", database_url)
        assert code == 1 and "no pause" in out and "parked" in out
        eventually(lambda: _status(ref, waiting) is Status.COMPLETED)
        assert ref.ask(GetHealth()).parked_accounts == ()


# -- cleanup ------------------------------------------------------------------------------


def test_cleanup_deletes_old_finished_rows_in_chunks(
        database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`cleanup` deletes finished rows older than the retention (then --older-than), a chunk per
    transaction, with their history; open rows stay and the running owner goes on sending."""
    monkeypatch.setattr("postroom_cli.cleanup.CLEANUP_CHUNK", 2)
    sender = RecordingSender()
    db = ("--database", database_url)
    with _running(database_url, sender) as ref:
        done = [ref.ask(Enqueue(phone=PHONE, user_id=str(n), text="t")) for n in range(6)]
        scheduled = ref.ask(Enqueue(phone=PHONE, user_id="s", text="later",
                                    scheduled_at=datetime.now(UTC) + timedelta(days=30)))
        eventually(lambda: sorted(sender.ids()) == done)
        old = int((datetime.now(UTC) - timedelta(days=8)).timestamp() * 1_000_000)
        _sql(database_url, f"UPDATE message_queue SET completed_at = ? WHERE id IN ({','.join('?' * 5)})",
             (old, *done[:5]))
        for message_id in done:  # an earlier attempt each (sent at the first claim, they have no row)
            _sql(database_url, "INSERT INTO message_attempts (message_id, slot, number, attempt, started_at,"
                 " ended_at, outcome, error) VALUES (?, 19, 0, 0, ?, ?, 'retrying', 'TransientError: x')",
                 (message_id, old, old))
        code, report = _json(capsys, "cleanup", *db)
        assert (code, report["deleted"], report["older_than_seconds"]) == (0, 5, 7 * 86_400)
        assert _sql(database_url, "SELECT id FROM message_queue ORDER BY id") == [(done[5],), (scheduled,)]
        assert _sql(database_url, "SELECT DISTINCT message_id FROM message_attempts") == [(done[5],)]
        code, report = _json(capsys, "cleanup", "--older-than", "0s", *db)
        assert (code, report["deleted"]) == (0, 1)
        after = ref.ask(Enqueue(phone=PHONE, user_id="n", text="after"))
        eventually(lambda: after in sender.ids())
        assert _status(ref, scheduled) is Status.PENDING


# -- dry runs, refusals, output -------------------------------------------------------------


@pytest.mark.parametrize(("argv", "key", "count"), [
    (["requeue", "--account", PHONE], "requeued", 2),
    (["requeue", "--error-match", "quota"], "requeued", 1),
    (["requeue", "FAILED"], "requeued", 1),
    (["cancel", "--account", PHONE], "cancelled", 3),
    (["cancel", "PENDING"], "cancelled", 0),
    (["cleanup", "--older-than", "1d"], "deleted", 2),
], ids=["requeue-account", "requeue-error", "requeue-id", "cancel-account", "cancel-id", "cleanup"])
def test_dry_runs_write_nothing(database_url: str, argv: list[str], key: str, count: int,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run says how many it would change and writes nothing: no row, no feed entry."""
    failed = _insert(database_url, PHONE, 2)
    _fail(database_url, failed[:1], "PermanentError: quota", finished_days_ago=3)
    _fail(database_url, failed[1:], "PermanentError: blocked", finished_days_ago=3)
    pending = _insert(database_url, PHONE, 3)
    argv = [str(failed[0]) if a == "FAILED" else str(pending[0]) if a == "PENDING" else a for a in argv]
    before = _snapshot(database_url)
    code, report = _json(capsys, *argv, "--dry-run", "--database", database_url)
    assert code == 0 and report["dry_run"] is True
    assert report[key] == count
    assert _snapshot(database_url) == before


@pytest.mark.parametrize("argv", [
    ["pause", "ACCOUNT"], ["resume", "ACCOUNT"], ["cancel", "--account", "ACCOUNT"],
    ["requeue", "--account", "ACCOUNT"],
], ids=["pause", "resume", "cancel", "requeue"])
@pytest.mark.parametrize("account", ["+19990000000", mask_phone("+19990000000")], ids=["whole", "masked"])
def test_an_unknown_account_is_exit_2(sqlite_url: str, argv: list[str], account: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """An account the database holds no message or pause of is a clear error, exit 2, nothing
    written."""
    _insert(sqlite_url, PHONE, 1)
    before = _snapshot(sqlite_url)
    code, out, err = _run(capsys, *[account if a == "ACCOUNT" else a for a in argv], "--database", sqlite_url)
    assert code == 2 and "unknown account" in err and "+19990000000" not in out + err
    assert _snapshot(sqlite_url) == before


def test_a_mask_of_two_accounts_is_refused(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A mask two accounts share (its hash is short) names neither: exit 2, asking for the phone."""
    alike = ("+150022201", "+150039901")  # found by search: the same mask
    assert mask_phone(alike[0]) == mask_phone(alike[1])
    for phone in alike:
        _insert(sqlite_url, phone, 1)
    code, _, err = _run(capsys, "pause", mask_phone(alike[0]), "--database", sqlite_url)
    assert code == 2 and "matches 2 accounts" in err and _changes(sqlite_url) == []
    assert _run(capsys, "pause", alike[1], "--database", sqlite_url)[0] == 0


WRITES = [["enqueue", "--account", PHONE, "--to", "u", "--text", "t"], ["requeue", "1"], ["cancel", "1"],
          ["pause", PHONE], ["resume", PHONE], ["cleanup"]]
WRITE_IDS = ["enqueue", "requeue", "cancel", "pause", "resume", "cleanup"]


@pytest.mark.parametrize("argv", WRITES, ids=WRITE_IDS)
def test_a_missing_sqlite_file_is_exit_2_and_never_created(
        tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Each write command on a SQLite file that does not exist fails (exit 2) and creates nothing."""
    missing = tmp_path / "nowhere" / "missing.db"
    code, _, err = _run(capsys, *argv, "--database", f"sqlite:///{missing}")
    assert code == 2 and "no database" in err
    assert not missing.parent.exists()


@pytest.mark.parametrize("argv", WRITES, ids=WRITE_IDS)
def test_a_missing_or_older_schema_names_postroom_migrate(
        database_url: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """On a database without postroom's schema, or with an older one, each write command says
    `SchemaMismatch` naming `postroom migrate` (exit 2) and writes nothing."""
    if database_url.startswith("sqlite"):
        open_database(database_url).connect()  # an empty file
    code, _, err = _run(capsys, *argv, "--database", database_url)
    assert code == 2 and "SchemaMismatch" in err and "postroom migrate" in err
    _insert(database_url, PHONE, 1)
    _sql(database_url, "UPDATE postroom_meta SET value = 3 WHERE key = 'schema_version'")
    before = _snapshot(database_url)
    code, _, err = _run(capsys, *argv, "--database", database_url)
    assert code == 2 and "older" in err and "postroom migrate" in err
    assert _snapshot(database_url) == before


def test_the_database_comes_from_the_environment(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --database, POSTROOM_DATABASE names it; with neither, a clear error, exit 2."""
    _insert(sqlite_url, PHONE, 1)
    monkeypatch.delenv("POSTROOM_DATABASE", raising=False)
    code, _, err = _run(capsys, "pause", PHONE)
    assert code == 2 and "POSTROOM_DATABASE" in err
    monkeypatch.setenv("POSTROOM_DATABASE", sqlite_url)
    assert _run(capsys, "pause", PHONE)[0] == 0
    assert _changes(sqlite_url) == [("paused", PHONE, None, None)]


@pytest.mark.parametrize("argv", [
    ["pause", PHONE], ["resume", PHONE], ["cancel", "--account", PHONE], ["requeue", "--account", PHONE],
    ["enqueue", "--account", PHONE, "--to", "u", "--text", "t"], ["cancel", "1"],
], ids=["pause", "resume", "cancel-account", "requeue-account", "enqueue", "cancel-id"])
def test_accounts_are_masked_unless_unmasked(sqlite_url: str, argv: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Output shows an account masked, as text and JSON; --unmasked shows it whole."""
    _insert(sqlite_url, PHONE, 3)
    for extra in ([], ["--json"]):
        code, out, err = _run(capsys, *argv, *extra, "--database", sqlite_url)
        assert code in (0, 1) and PHONE not in out + err
        if extra or argv[0] != "cancel" or "--account" in argv:
            assert mask_phone(PHONE) in out
    code, out, _ = _run(capsys, *argv, "--json", "--unmasked", "--database", sqlite_url)
    assert PHONE in out


# -- as processes ---------------------------------------------------------------------------


def _postroom(url: str, *argv: str) -> dict[str, Any]:
    """`python -m postroom_cli ARGV --json` as another process, the database from the environment."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POSTROOM_DATABASE": url}
    done = subprocess.run([sys.executable, "-m", "postroom_cli", *argv, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_commands_as_processes_beside_a_running_supervisor(database_url: str) -> None:
    """`postroom enqueue`, `requeue` and `cancel` run as processes of their own beside a running
    supervisor: it sends the enqueued message, sends the requeued one again, and never the
    cancelled one."""
    def refuse_first(message: Message, call: int) -> None:
        if message.text == "fails once" and call == 1:
            raise PermanentError("blocked")

    sender = RecordingSender(refuse_first)
    with _running(database_url, sender) as ref:
        once = _postroom(database_url, "enqueue", "--account", PHONE, "--to", "u",
                         "--text", "fails once")["id"]
        eventually(lambda: _status(ref, once) is Status.FAILED)
        assert _postroom(database_url, "requeue", str(once))["requeued"] == 1
        eventually(lambda: _status(ref, once) is Status.COMPLETED)
        later = _postroom(database_url, "enqueue", "--account", PHONE, "--to", "u", "--text", "t",
                          "--at", "1h")["id"]
        assert _postroom(database_url, "cancel", "--account", mask_phone(PHONE))["cancelled"] == 1
        assert _status(ref, later) is Status.CANCELLED
    assert sender.ids() == [once, once]
