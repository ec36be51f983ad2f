"""The operator's read commands (`status`, `list`, `inspect`, `health`) on a real queue holding
messages in every state, while a supervisor sends from it, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.errors import AccountSuspended, PermanentError, RateLimited, TransientError
from actors.privacy import mask_phone
from postroom_cli.main import main
from postroom_common import Message, Status
from storage import Storage, open_database
from supervisor import CancelMessage, Enqueue, FakeClock, GetMessage, Supervisor
from tests.conftest import eventually
from tests.integration.helpers import RecordingSender, cli_globals_restored, quiet_library_logs, start
from tests.integration.test_status_read_only import NOBODY, ROOT, _python_for_nobody, shared_dir

__all__ = ["shared_dir"]  # a fixture, imported to be used here

A, B, C = "+15550000001", "+15550000002", "+15550000003"
PHONES = (A, B, C)


@pytest.fixture(autouse=True)
def _isolate_globals() -> Iterator[None]:
    """Stop every actor and undo the CLI's global logging configuration after each test."""
    with cli_globals_restored():
        yield


@dataclass
class Queue:
    """A supervisor sending from a database that holds a message in every state."""

    url: str
    ref: pykka.ActorRef[Supervisor]
    ids: dict[str, int]
    sender: RecordingSender


def _script(release: threading.Event) -> Any:
    def script(message: Message, call: int) -> None:
        if message.text == "transient":
            raise TransientError("gateway said 502")
        if message.text == "permanent":
            raise PermanentError("chat not found")
        if message.text == "banned":
            raise AccountSuspended("session revoked")
        if message.text == "slow down":
            raise RateLimited(3600)
        if message.text == "block":
            release.wait(60)  # in flight until the test lets it go
    return script


@contextmanager
def busy_queue(url: str, start_at: datetime | None = None) -> Iterator[Queue]:
    """A running supervisor (time stands still on a FakeClock) whose database holds a message
    in every status, a message scheduled later, a disabled account (B) and a rate-limited one
    (C); account A's send of "block" stays in flight until the end."""
    quiet_library_logs()
    clock = FakeClock(start_at or datetime.now(UTC))
    release = threading.Event()
    sender = RecordingSender(_script(release))
    ref = start(url, sender, clock=clock)
    later = clock.now() + timedelta(hours=1)

    def put(phone: str, text: str, **fields: Any) -> int:
        return int(ref.ask(Enqueue(phone=phone, user_id="u1", text=text, **fields)))

    ids = {status: put(A, text) for status, text in (
        ("completed", "ok"), ("retrying", "transient"), ("failed", "permanent"), ("processing", "block"),
        ("pending", "waiting"))}
    ids["scheduled"] = put(A, "later", scheduled_at=later)
    ids["cancelled"] = put(A, "cancel me", scheduled_at=later)
    ref.ask(CancelMessage(ids["cancelled"]))
    ids["disabled"] = put(B, "banned")
    ids["rate_limited"] = put(C, "slow down")
    try:
        eventually(lambda: _settled(ref, ids) and len(_pauses(url, clock.now())) == 2)
        yield Queue(url, ref, ids, sender)
    finally:
        release.set()
        ref.stop()


def _settled(ref: pykka.ActorRef[Supervisor], ids: dict[str, int]) -> bool:
    expected = {"completed": Status.COMPLETED, "retrying": Status.RETRYING, "failed": Status.FAILED,
                "processing": Status.PROCESSING, "pending": Status.PENDING, "scheduled": Status.PENDING,
                "cancelled": Status.CANCELLED, "disabled": Status.PENDING, "rate_limited": Status.PENDING}
    return all(ref.ask(GetMessage(ids[name])).status is status for name, status in expected.items())


def _pauses(url: str, now: datetime | None = None) -> list[Any]:
    store = Storage(open_database(url, read_only=True))
    try:
        return store.pauses(now or datetime.now(UTC))
    finally:
        store.close()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`postroom ARGV` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def _no_whole_phone(*texts: str) -> bool:
    return not any(phone in text for phone in PHONES for text in texts)


# -- status ---------------------------------------------------------------------------------


def test_status_reports_a_busy_queue_as_it_is(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Beside a running supervisor, status counts every status, tells due from scheduled, shows B
    as disabled until lifted and C as paused, and names the running owner; phones masked."""
    with busy_queue(database_url):
        code, table, _ = _run(capsys, "status", "--database", database_url)
        report = _json(capsys, "status", "--database", database_url)
    assert code == 0
    assert all(report["by_status"][s.value] >= 1 for s in Status)
    assert report["by_status"]["pending"] == 4 and report["total"] == 9
    assert (report["due"], report["scheduled"]) == (3, 2)  # retrying waits for its backoff
    assert report["oldest_due"]["account"] == mask_phone(A)  # B and C are held by their pauses
    paused = {p["account"]: p for p in report["paused"]}
    assert paused[mask_phone(B)] | {"reason": ""} == {
        "account": mask_phone(B), "until": None, "disabled": True, "state": "disabled until lifted",
        "reason": ""}
    assert paused[mask_phone(C)]["disabled"] is False and paused[mask_phone(C)]["until"] is not None
    owner = report["owner"]
    assert owner["running"] is True and f"pid {os.getpid()} " in owner["holder"]
    assert "disabled until lifted" in table and "paused until" in table
    assert "lifted" not in table.replace("disabled until lifted", "")  # never "until lifted" alone
    assert "Owner: running" in table and "3 due now, 2 scheduled later" in table
    assert _no_whole_phone(table, json.dumps(report))


def test_status_after_the_supervisor_stopped_says_none_runs(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Once the supervisor has stopped, status says no supervisor runs and names the last one."""
    with busy_queue(database_url):
        pass
    owner = _json(capsys, "status", "--database", database_url)["owner"]
    assert owner["running"] is False and owner["lock_holder"] is None
    assert owner["holder"].startswith(f"postroom supervisor pid {os.getpid()} ") and owner["epoch"] == 1
    code, table, _ = _run(capsys, "status", "--database", database_url)
    assert code == 0 and "no supervisor running (the last: postroom supervisor pid" in table


def test_status_watch_refreshes_until_its_count(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`--watch` with --json prints one JSON document a line per refresh, each read afresh."""
    with busy_queue(sqlite_url):
        code, out, _ = _run(capsys, "status", "--database", sqlite_url, "--json", "--watch", "0.01",
                            "--watch-count", "3")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    reports = [json.loads(line) for line in lines]
    assert all(r["total"] == 9 for r in reports) and len({r["at"] for r in reports}) == 3


def test_status_takes_the_database_from_the_environment(
        sqlite_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --database, POSTROOM_DATABASE names the database; with neither, exit 2 says how."""
    with busy_queue(sqlite_url):
        monkeypatch.setenv("POSTROOM_DATABASE", sqlite_url)
        assert _json(capsys, "status")["total"] == 9
        monkeypatch.delenv("POSTROOM_DATABASE")
        code, _, err = _run(capsys, "status")
    assert code == 2 and "--database URL or set POSTROOM_DATABASE" in err


@pytest.mark.postgres
@pytest.mark.parametrize("argv", [["status"], ["list"], ["inspect", "1"], ["status", "--json"]])
def test_a_postgres_database_without_the_schema_is_named_so(
        postgres_url: str, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """On a PostgreSQL database without postroom's tables each read says so and names
    `postroom migrate` (exit 2), never a raw `relation does not exist`."""
    code, out, err = _run(capsys, *argv, "--database", postgres_url)
    assert code == 2 and out == ""
    assert "no postroom schema" in err and "postroom migrate" in err and "relation" not in err


# -- list -----------------------------------------------------------------------------------


def _listed(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> list[int]:
    return [m["id"] for m in _json(capsys, "list", "--database", url, *argv)["messages"]]


def test_list_filters_by_account_status_priority_and_error(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """list selects by account (whole or masked), status, priority and error text (any case,
    % taken literally), beside a running supervisor."""
    with busy_queue(database_url) as queue:
        ids = queue.ids
        assert _listed(capsys, database_url, "--account", mask_phone(B)) == [ids["disabled"]]
        assert _listed(capsys, database_url, "--account", C) == [ids["rate_limited"]]
        assert _listed(capsys, database_url, "--status", "failed", "--status", "retrying") == [
            ids["retrying"], ids["failed"]]
        assert _listed(capsys, database_url, "--account", A, "--status", "pending") == [
            ids["pending"], ids["scheduled"]]
        assert _listed(capsys, database_url, "--priority", "high") == []
        assert _listed(capsys, database_url, "--error", "GATEWAY SAID") == [ids["retrying"]]
        assert _listed(capsys, database_url, "--error", "%") == []
        code, table, _ = _run(capsys, "list", "--database", database_url, "--account", mask_phone(A))
    assert code == 0 and mask_phone(A) in table and _no_whole_phone(table)
    assert "in 59m" in table and "now" in table  # when each open message falls due


def test_list_pages_through_every_message_in_either_order(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Following the cursor, pages of 2 list every message once, oldest or newest first."""
    with busy_queue(database_url) as queue:
        for order, expected in (([], sorted(queue.ids.values())),
                                (["--newest-first"], sorted(queue.ids.values(), reverse=True))):
            seen: list[int] = []
            cursor: list[str] = []
            while True:
                page = _json(capsys, "list", "--database", database_url, "--limit", "2", *order, *cursor)
                seen += [m["id"] for m in page["messages"]]
                if page["next_after_id"] is None:
                    break
                cursor = ["--after-id", str(page["next_after_id"])]
            assert seen == expected


def test_list_selects_by_creation_time(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--since and --until select by created_at, given in ISO 8601 or as a duration ago."""
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with busy_queue(database_url, start_at=hour_ago):
        every = _listed(capsys, database_url)
        assert _listed(capsys, database_url, "--since", "2h") == every
        assert _listed(capsys, database_url, "--since", "30m") == []
        assert _listed(capsys, database_url, "--until", "30m") == every
        since = (hour_ago - timedelta(seconds=1)).isoformat()
        until = (hour_ago + timedelta(seconds=1)).isoformat()
        assert _listed(capsys, database_url, "--since", since, "--until", until) == every
        code, _, err = _run(capsys, "list", "--database", database_url, "--since", "1m", "--until", "2h")
    assert code == 2 and "--since must be before --until" in err


@pytest.mark.parametrize("account", ["+15550009999", "+15*******01~0000"])
def test_an_unknown_account_is_said_to_be_unknown(
        sqlite_url: str, capsys: pytest.CaptureFixture[str], account: str) -> None:
    """An account no message or pause has, whole or masked, is an "unknown account" error, exit 2."""
    with busy_queue(sqlite_url):
        code, out, err = _run(capsys, "list", "--database", sqlite_url, "--account", account)
    assert code == 2 and out == "" and "unknown account" in err


# -- inspect --------------------------------------------------------------------------------


def test_inspect_shows_every_field_and_the_attempts(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """inspect shows the message's fields, its text, and its attempts from the history; the
    account of a disabled message shows its pause."""
    with busy_queue(database_url) as queue:
        shown = _json(capsys, "inspect", str(queue.ids["retrying"]), "--database", database_url)
        code, table, _ = _run(capsys, "inspect", str(queue.ids["retrying"]), "--database", database_url)
        disabled = _json(capsys, "inspect", str(queue.ids["disabled"]), "--database", database_url)
    assert code == 0
    assert (shown["status"], shown["text"], shown["account"]) == ("retrying", "transient", mask_phone(A))
    assert shown["attempts"] == 1 and shown["last_error"] == "TransientError: gateway said 502"
    for field in ("user_id", "priority", "max_attempts", "created_at", "scheduled_at", "available_at",
                  "updated_at", "completed_at", "idempotency_key", "attachment"):
        assert field in shown
    (attempt,) = shown["history"]
    assert (attempt["number"], attempt["outcome"], attempt["error"]) == (1, "retrying", shown["last_error"])
    assert "transient" in table and "gateway said 502" in table and "retrying" in table
    assert disabled["account_pause"]["state"] == "disabled until lifted"
    assert _no_whole_phone(table, json.dumps(shown))


def test_inspect_no_text_hides_the_text(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--no-text leaves the text out of the table and the JSON."""
    with busy_queue(sqlite_url) as queue:
        message = str(queue.ids["pending"])
        shown = _json(capsys, "inspect", message, "--database", sqlite_url, "--no-text")
        code, table, _ = _run(capsys, "inspect", message, "--database", sqlite_url, "--no-text")
    assert "text" not in shown and code == 0 and "waiting" not in table


def test_inspect_escapes_control_characters(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A text holding a terminal escape sequence is shown escaped, never sent to the terminal."""
    quiet_library_logs()
    ref = start(sqlite_url, RecordingSender())
    try:
        message = ref.ask(Enqueue(phone=A, user_id="u", text="hi \x1b[2J there", scheduled_at=datetime(
            2100, 1, 1, tzinfo=UTC)))
        code, table, _ = _run(capsys, "inspect", str(message), "--database", sqlite_url)
    finally:
        ref.stop()
    assert code == 0 and "\x1b" not in table and "hi \\x1b[2J there" in table


def test_inspect_of_a_missing_id_exits_2(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An id no message has is MessageNotFound, exit 2."""
    with busy_queue(sqlite_url):
        code, out, err = _run(capsys, "inspect", "999999", "--database", sqlite_url)
    assert code == 2 and out == "" and "no message with id 999999" in err


# -- health ---------------------------------------------------------------------------------


def _health(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = _run(capsys, "health", "--database", url, "--json", *argv)
    report = json.loads(out)
    assert report["exit_code"] == code
    return code, {check["name"]: check["result"] for check in report["checks"]}


def _wait_for_completion(url: str, count: int) -> None:
    store = Storage(open_database(url, read_only=True))
    try:
        eventually(lambda: store.stats().by_status[Status.COMPLETED] == count)
    finally:
        store.close()


def test_health_of_a_working_queue_is_0(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A running supervisor that has sent everything: every check ok, exit 0, in the table too."""
    quiet_library_logs()
    ref = start(database_url, RecordingSender())
    try:
        for _ in range(3):
            ref.ask(Enqueue(phone=A, user_id="u", text="hi"))
        _wait_for_completion(database_url, 3)
        code, checks = _health(capsys, database_url)
        table_code, table, _ = _run(capsys, "health", "--database", database_url)
    finally:
        ref.stop()
    assert code == 0 and set(checks.values()) == {"ok"} and len(checks) == 7
    assert table_code == 0 and "postroom health: healthy" in table


def test_health_without_a_supervisor_is_degraded(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """No supervisor holds the owner lock: the owner check fails, exit 1."""
    with busy_queue(database_url):
        pass
    code, checks = _health(capsys, database_url, "--allow-disabled")
    assert code == 1 and checks["owner"] == "fail" and checks["database"] == "ok"


def test_health_finds_a_stuck_send(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A message in processing for longer than --stuck-after (a send claimed 5 minutes ago that
    has not ended) makes the queue degraded, exit 1."""
    with busy_queue(database_url, start_at=datetime.now(UTC) - timedelta(minutes=5)):
        code, checks = _health(capsys, database_url, "--allow-disabled", "--max-age", "1h")
        fresh_code, fresh = _health(capsys, database_url, "--allow-disabled", "--max-age", "1h",
                                    "--stuck-after", "10m")
    assert code == 1 and checks["in_flight"] == "fail"
    assert fresh_code == 0 and fresh["in_flight"] == "ok"


def test_health_finds_an_old_due_message(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A message due for longer than --max-age that nothing sends (the owner's clock lags 20
    minutes) makes the queue degraded, exit 1."""
    quiet_library_logs()
    clock = FakeClock(datetime.now(UTC) - timedelta(minutes=20))
    ref = start(database_url, RecordingSender(), clock=clock)
    try:
        ref.ask(Enqueue(phone=A, user_id="u", text="hi", scheduled_at=clock.now() + timedelta(minutes=1)))
        code, checks = _health(capsys, database_url)
        lenient, _ = _health(capsys, database_url, "--max-age", "1h")
    finally:
        ref.stop()
    assert code == 1 and checks["oldest_due"] == "fail" and lenient == 0


def test_health_finds_a_disabled_account(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An account disabled until lifted makes the queue degraded, unless --allow-disabled."""
    quiet_library_logs()
    ref = start(database_url, RecordingSender(_script(threading.Event())))
    try:
        ref.ask(Enqueue(phone=B, user_id="u", text="banned"))
        eventually(lambda: _pauses(database_url))
        code, checks = _health(capsys, database_url)
        allowed, _ = _health(capsys, database_url, "--allow-disabled")
    finally:
        ref.stop()
    assert code == 1 and checks["disabled"] == "fail" and allowed == 0


@pytest.mark.postgres
def test_health_of_a_postgres_database_without_schema_is_degraded(
        postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """PostgreSQL answers but holds no postroom schema: the schema check fails naming
    `postroom migrate`, the checks after it are skipped, exit 1."""
    code, out, _ = _run(capsys, "health", "--database", postgres_url, "--json")
    checks = {check["name"]: check for check in json.loads(out)["checks"]}
    assert code == 1 and checks["database"]["result"] == "ok"
    assert checks["schema"]["result"] == "fail" and "postroom migrate" in checks["schema"]["detail"]
    assert checks["owner"]["result"] == "skipped"


def test_health_of_an_unreachable_postgres_is_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A PostgreSQL URL to a closed port: the database check fails, every other is skipped, exit 2."""
    url = "postgresql://postgres@127.0.0.1:1/postroom"
    code, checks = _health(capsys, url, "--timeout", "2")
    assert code == 2 and checks["database"] == "fail"
    assert {checks[name] for name in checks if name != "database"} == {"skipped"}
    table_code, table, _ = _run(capsys, "health", "--database", url, "--timeout", "2")
    assert table_code == 2 and "unreachable" in table


def test_health_of_a_missing_sqlite_file_is_2_and_creates_nothing(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A SQLite file that does not exist: unreachable, exit 2, and neither it nor its directory is made."""
    missing = tmp_path / "nowhere" / "q.db"
    code, checks = _health(capsys, f"sqlite:///{missing}")
    assert code == 2 and checks["database"] == "fail" and not missing.parent.exists()


def test_health_of_a_sqlite_file_it_cannot_write_is_degraded(
        sqlite_url: str, tmp_path: Path, shared_dir: Path) -> None:
    """Run as user nobody on a 0444 file in a 0555 directory: the database is read, the writable
    check fails (found without writing), and nothing is created beside the file."""
    python, env = _python_for_nobody()
    with busy_queue(sqlite_url):
        pass
    directory = shared_dir / "readonly"
    directory.mkdir()
    shutil.copyfile(tmp_path / "postroom.db", directory / "q.db")
    (directory / "q.db").chmod(0o444)
    directory.chmod(0o555)
    done = subprocess.run(
        [python, "-m", "postroom_cli", "health", "--database", f"sqlite:///{directory}/q.db", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env, user=NOBODY, group=NOBODY,
        extra_groups=[])
    checks = {check["name"]: check for check in json.loads(done.stdout)["checks"]}
    assert done.returncode == 1 and checks["database"]["result"] == "ok"
    assert checks["writable"]["result"] == "fail" and "not writable" in checks["writable"]["detail"]
    assert sorted(p.name for p in directory.iterdir()) == ["q.db"]


def test_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """`postroom --version` prints postroom's version and exits 0."""
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("postroom 0.")


# -- nothing written, other processes ------------------------------------------------------


def _snapshot(db: Path) -> list[tuple[bytes, int]]:
    """The bytes and modification time of the database file and its WAL."""
    return [(path.read_bytes(), path.stat().st_mtime_ns) for path in (db, Path(f"{db}-wal"))]


def test_read_commands_write_nothing(
        sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every read command, beside a running supervisor, leaves the SQLite file and its WAL byte
    for byte as they were, and their modification times too."""
    db = tmp_path / "postroom.db"
    with busy_queue(sqlite_url) as queue:
        before = _snapshot(db)
        assert before[1][0], "no WAL: the test would prove less"
        for argv in (["status"], ["status", "--json", "--watch", "0.01", "--watch-count", "2"],
                     ["list"], ["list", "--account", mask_phone(A), "--error", "x"],
                     ["inspect", str(queue.ids["retrying"])], ["health", "--json"]):
            code, _, err = _run(capsys, *argv, "--database", sqlite_url)
            assert code in (0, 1), err  # health: B is disabled
        assert _snapshot(db) == before


def _ambiguous_phones() -> tuple[str, str]:
    """Two phones alike at both ends whose masks' hashes collide too (found by trying)."""
    seen: dict[str, str] = {}
    for n in range(100_000):
        phone = f"+1555{n:06d}01"
        twin = seen.setdefault(mask_phone(phone), phone)
        if twin != phone:
            return twin, phone
    raise AssertionError("no two phones share a mask")


def test_a_mask_two_accounts_share_asks_for_the_whole_phone(
        sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A masked ACCOUNT that matches two accounts is refused (exit 2), naming --unmasked; each
    whole phone still selects its own messages."""
    twins = _ambiguous_phones()
    quiet_library_logs()
    ref = start(sqlite_url, RecordingSender())
    try:
        ids = [ref.ask(Enqueue(phone=phone, user_id="u", text="hi")) for phone in twins]
        code, _, err = _run(capsys, "list", "--database", sqlite_url, "--account", mask_phone(twins[0]))
        assert code == 2 and "matches 2 accounts" in err and "--unmasked" in err
        assert [_listed(capsys, sqlite_url, "--account", phone) for phone in twins] == [[ids[0]], [ids[1]]]
    finally:
        ref.stop()


def test_status_and_health_see_a_supervisor_in_another_process(
        database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A supervisor running in a process of its own: status names it as the owner (its pid),
    health is 0 once it sent what a producer queued, and after it stops status says none runs."""
    from supervisor import Producer

    store = Storage(open_database(database_url))
    store.create_schema()
    store.close()
    child = subprocess.Popen([sys.executable, "-m", "tests.integration.owner_child", database_url],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdin is not None and child.stdout is not None
    with child, child.stdin, child.stdout:
        try:
            assert [child.stdout.readline().strip() for _ in range(2)] == ["ready", "started"]
            with Producer(database_url) as producer:
                for _ in range(3):
                    producer.enqueue(phone=A, user_id="u", text="hi")
            _wait_for_completion(database_url, 3)
            owner = _json(capsys, "status", "--database", database_url)["owner"]
            code, checks = _health(capsys, database_url)
        finally:
            child.stdin.close()
            child.wait(timeout=60)
    assert owner["running"] is True and owner["holder"].startswith(f"postroom supervisor pid {child.pid} ")
    assert code == 0 and set(checks.values()) == {"ok"}
    assert _json(capsys, "status", "--database", database_url)["owner"]["running"] is False


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child before it runs: SIGINT's default action. A test run started in the
    background by a shell without job control (`cmd &` in a script) inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt: Ctrl-C at a terminal is the
    case under test, not that one."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_status_watch_ends_at_ctrl_c_with_exit_0(sqlite_url: str) -> None:
    """`status --watch` in a process of its own refreshes until SIGINT, then exits 0."""
    with busy_queue(sqlite_url):
        watch = subprocess.Popen(
            [sys.executable, "-m", "postroom_cli", "status", "--database", sqlite_url, "--json",
             "--watch", "0.05"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=_ctrl_c_as_in_a_terminal)
        assert watch.stdout is not None
        with watch:
            try:
                reports = [json.loads(watch.stdout.readline()) for _ in range(2)]
            finally:
                watch.send_signal(signal.SIGINT)
            _, err = watch.communicate(timeout=30)
    assert [r["total"] for r in reports] == [9, 9]
    assert watch.returncode == 0, err
