"""Encryption at rest on a real SQLite file and PostgreSQL: text and attachment stored under
the keys of POSTROOM_ENCRYPTION_KEYS, read back by every process that holds them, refused
with a typed error (nothing changed) by one that does not, plain rows readable beside
encrypted ones, and `postroom rotate-key` beside a running supervisor, killed and run again."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytest.importorskip("cryptography")  # the [crypto] extra ([dev] installs it)
from cryptography.fernet import Fernet

from actors.producer import Producer
from postroom_cli.main import main
from postroom_cli.rotate_key import CHUNK, PAUSE_ENV
from postroom_common import EncryptionKeyError, MessageFilter, NewMessage, Priority
from storage import Storage, open_database
from storage.crypto import KEYS_ENV, Keyring, key_id
from supervisor import GetMessage, Message, Status, Supervisor
from tests.conftest import eventually
from tests.integration.helpers import RecordingSender, cli_globals_restored, quiet_library_logs, start

ROOT = Path(__file__).resolve().parents[2]
KEY_A, KEY_B = Fernet.generate_key().decode(), Fernet.generate_key().decode()
PHONE = "+15550001234"


@pytest.fixture(autouse=True)
def _isolate_globals() -> Iterator[None]:
    """Stop every actor and undo the CLI's logging configuration after each test."""
    with cli_globals_restored():
        yield


# -- helpers ------------------------------------------------------------------------------


def _id(key: str) -> str:
    return key_id(base64.urlsafe_b64decode(key))


@contextmanager
def _store(url: str, *keys: str) -> Iterator[Storage]:
    """A Storage of `url` under exactly `keys` (none: plain), whatever the environment."""
    store = Storage(open_database(url), keys=Keyring(keys) if keys else None)
    try:
        yield store
    finally:
        store.close()  # the raw reads' connection too
        store.close_all()


def _write(url: str, texts: list[str], *keys: str, attachment: str | None = None) -> list[int]:
    """Rows written as a producer of those keys writes them (the schema created first)."""
    now = datetime.now(UTC)
    with _store(url, *keys) as store:
        store.create_schema()
        with store.write_transaction():
            return [int(i) for i in store.insert([  # type: ignore[call-overload]
                NewMessage(f"+1555000{n % 7:04d}", "u1", text, attachment, Priority.NORMAL, now, None, 3,
                           None)
                for n, text in enumerate(texts)])]


def _raw(url: str) -> list[tuple[int, bytes, str | None, str, int]]:
    """(id, text, attachment, status, attempts) as stored, read with SQL."""
    with _store(url) as store:
        rows = store.db.execute_sql("SELECT id, text, attachment, status, attempts FROM message_queue"
                                    " ORDER BY id").fetchall()
    return [(int(i), bytes(t), a, s, int(n)) for i, t, a, s, n in rows]


def _key_facts(url: str) -> set[str]:
    with _store(url) as store:
        rows = store.db.execute_sql("SELECT key FROM postroom_meta").fetchall()
    return {str(key) for (key,) in rows if str(key).startswith("encryption_key:")}


def _under(row_text: bytes, key: str) -> bool:
    return row_text.startswith(b"\xfffernet1:" + _id(key).encode())


def _texts(url: str, *keys: str) -> dict[int, str]:
    """Every message's text, read through `keys`."""
    with _store(url, *keys) as store:
        return {m.id: m.text for m in store.find_messages(_everything())}


def _everything() -> MessageFilter:
    return MessageFilter(limit=1_000_000)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- reading and writing through the keys ---------------------------------------------------


def test_stored_bytes_are_not_the_plain_text(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a key set, a producer's text and attachment are stored encrypted (read with SQL: no
    trace of either), the key is named in postroom_meta, and the message reads back whole."""
    _write(database_url, [])
    monkeypatch.setenv(KEYS_ENV, KEY_A)
    with Producer(database_url) as producer:
        message_id = producer.enqueue(PHONE, "u1", "meet me at the old mill", attachment="photo-file-id-42")
        assert producer.storage.get(message_id).text == "meet me at the old mill"
        assert producer.storage.get(message_id).attachment == "photo-file-id-42"
    ((_, text, attachment, _, _),) = _raw(database_url)
    assert b"old mill" not in text and _under(text, KEY_A)
    assert attachment is not None and "photo" not in attachment and attachment.startswith("\x01fernet1:")
    assert _key_facts(database_url) == {f"encryption_key:{_id(KEY_A)}"}


def test_wrong_or_missing_key_is_refused_at_start_and_changes_nothing(
        database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A database encrypted under one key: a supervisor, a producer and the read and write
    commands started with another key, or none, each refuse with `EncryptionKeyError` naming
    the variable, and no row changes; with the right key the supervisor sends every text."""
    ids = _write(database_url, [f"secret {n}" for n in range(20)], KEY_A)
    before = _raw(database_url)
    for env in (KEY_B, None):
        if env is None:
            monkeypatch.delenv(KEYS_ENV, raising=False)
        else:
            monkeypatch.setenv(KEYS_ENV, env)
        with pytest.raises(EncryptionKeyError, match=KEYS_ENV):
            Supervisor.start(database=database_url, sender=RecordingSender())
        with pytest.raises(EncryptionKeyError, match=KEYS_ENV):
            Producer(database_url)
        for argv in (["list"], ["inspect", str(ids[0])],
                     ["enqueue", "--account", PHONE, "--to", "u", "--text", "x"], ["cancel", str(ids[0])]):
            code, _, err = _cli(capsys, *argv, "--database", database_url)
            assert code == 2 and "EncryptionKeyError" in err, (argv, err)
        assert _raw(database_url) == before
    monkeypatch.setenv(KEYS_ENV, f"{KEY_B},{KEY_A}")  # the old key still held: every row reads
    sender = RecordingSender()
    quiet_library_logs()
    ref = start(database_url, sender)
    sender.wait_for(len(ids))
    assert sorted(m.text for m in sender.calls) == sorted(f"secret {n}" for n in range(20))
    eventually(lambda: all(ref.ask(GetMessage(i)).status is Status.COMPLETED for i in ids))
    ref.stop()


def test_a_key_that_is_not_a_key_is_refused_before_anything_is_written(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value of POSTROOM_ENCRYPTION_KEYS that is no Fernet key is refused by position, the
    value never repeated in the error."""
    _write(database_url, ["hello"])
    monkeypatch.setenv(KEYS_ENV, f"{KEY_A},not-a-key-at-all")
    with pytest.raises(EncryptionKeyError, match="key 2 of") as refused:
        Producer(database_url)
    assert "not-a-key" not in str(refused.value)
    assert len(_raw(database_url)) == 1


def test_plain_rows_stay_readable_with_keys_set(database_url: str, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A database written without encryption works once keys are set: its plain rows are sent
    and listed as they are, new rows beside them are encrypted."""
    plain = _write(database_url, ["written in the clear"], attachment="doc-1")
    monkeypatch.setenv(KEYS_ENV, KEY_A)
    with Producer(database_url) as producer:
        sealed = producer.enqueue(PHONE, "u2", "written sealed", attachment="doc-2")
    rows = {row[0]: row for row in _raw(database_url)}
    assert rows[plain[0]][1] == b"written in the clear" and _under(rows[sealed][1], KEY_A)
    code, out, _ = _cli(capsys, "list", "--json", "--database", database_url)
    assert code == 0
    assert [m["attachment"] for m in json.loads(out)["messages"]] == ["doc-1", "doc-2"]
    sender = RecordingSender()
    quiet_library_logs()
    ref = start(database_url, sender)
    sender.wait_for(2)
    assert sorted(m.text for m in sender.calls) == ["written in the clear", "written sealed"]
    ref.stop()


def test_cli_enqueue_list_and_inspect_go_through_the_keys(
        database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`postroom enqueue` stores its text and attachment encrypted; `list` and `inspect` show
    them decrypted."""
    _write(database_url, [])
    monkeypatch.setenv(KEYS_ENV, KEY_A)
    code, out, err = _cli(capsys, "enqueue", "--account", PHONE, "--to", "u1", "--text", "from the shell",
                          "--attachment", "ref-77", "--json", "--database", database_url)
    assert code == 0, err
    message_id = json.loads(out)["id"]
    ((_, text, attachment, _, _),) = _raw(database_url)
    assert b"shell" not in text and attachment is not None and "ref-77" not in attachment
    code, out, _ = _cli(capsys, "inspect", str(message_id), "--json", "--database", database_url)
    assert code == 0 and json.loads(out)["text"] == "from the shell"
    assert json.loads(out)["attachment"] == "ref-77"
    code, out, _ = _cli(capsys, "list", "--json", "--database", database_url)
    assert code == 0 and json.loads(out)["messages"][0]["attachment"] == "ref-77"


# -- rotate-key -----------------------------------------------------------------------------


def test_rotate_key_encrypts_in_place_beside_a_running_supervisor(
        database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Plain rows and rows under an old key, a supervisor sending them and a producer adding
    more: `rotate-key` leaves every row under the new key, every message sent once with its
    text, no status or attempt overwritten; the old key is forgotten, and a process holding
    only the new key starts."""
    texts = [f"plain {n}" for n in range(300)]
    _write(database_url, texts)
    texts += [f"old {n}" for n in range(300)]
    _write(database_url, texts[300:], KEY_A)
    monkeypatch.setenv(KEYS_ENV, f"{KEY_B},{KEY_A}")

    def slow(message: Message, call: int) -> None:
        time.sleep(0.002)  # sends overlap the rotation's chunks

    sender = RecordingSender(slow)
    quiet_library_logs()
    ref = start(database_url, sender)
    stop = threading.Event()
    produced: list[str] = []

    def produce() -> None:
        with Producer(database_url) as producer:
            while not stop.is_set() and len(produced) < 200:
                text = f"new {len(produced)}"
                producer.enqueue(PHONE, "u9", text)
                produced.append(text)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        sender.wait_for(50)
        code, out, err = _cli(capsys, "rotate-key", "--json", "--database", database_url)
        assert code == 0, err
        assert json.loads(out)["forgotten"] == [_id(KEY_A)]
    finally:
        stop.set()
        producer.join(timeout=30)
    total = len(texts) + len(produced)
    sender.wait_for(total, timeout=60)
    eventually(lambda: all(row[3] == Status.COMPLETED.value for row in _raw(database_url)), timeout=30)
    ref.stop()
    rows = _raw(database_url)
    assert len(rows) == total and all(_under(text, KEY_B) for _, text, _, _, _ in rows)
    assert all(attempts == 1 for *_, attempts in rows)  # a claim's attempt never undone by the rotation
    assert sorted(m.text for m in sender.calls) == sorted(texts + produced)
    assert _key_facts(database_url) == {f"encryption_key:{_id(KEY_B)}"}
    monkeypatch.setenv(KEYS_ENV, KEY_B)
    with Producer(database_url) as alone:
        assert sorted(m.text for m in alone.storage.find_messages(_everything())) == sorted(texts + produced)


@pytest.mark.slow
def test_rotate_key_killed_half_way_and_run_again(database_url: str) -> None:
    """`postroom rotate-key` as a process, SIGKILLed between chunks: every row still reads
    (some under the new key, the rest under the old one); run again, it ends with every row
    under the new key, none lost, and the old key forgotten."""
    texts = [f"message {n}" for n in range(CHUNK * 12)]
    ids = _write(database_url, texts[: CHUNK * 6]) + _write(database_url, texts[CHUNK * 6:], KEY_A)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POSTROOM_DATABASE": database_url,
           KEYS_ENV: f"{KEY_B},{KEY_A}", PAUSE_ENV: "0.2"}
    command = [sys.executable, "-m", "postroom_cli", "rotate-key", "--json"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        eventually(lambda: sum(_under(t, KEY_B) for _, t, *_ in _raw(database_url)) >= CHUNK * 3,
                   timeout=60, interval=0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    half = _raw(database_url)
    done = sum(_under(text, KEY_B) for _, text, *_ in half)
    assert CHUNK * 3 <= done < len(ids), "the kill came after the end: nothing was tested"
    assert _texts(database_url, KEY_B, KEY_A) == dict(zip(ids, texts, strict=True))
    assert f"encryption_key:{_id(KEY_A)}" in _key_facts(database_url)  # still needed

    env.pop(PAUSE_ENV)
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                           check=False)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["written"] == len(ids) - done
    rows = _raw(database_url)
    assert [row[0] for row in rows] == ids and all(_under(text, KEY_B) for _, text, *_ in rows)
    assert all(status == "pending" for *_, status, _ in rows)
    assert _texts(database_url, KEY_B) == dict(zip(ids, texts, strict=True))
    assert _key_facts(database_url) == {f"encryption_key:{_id(KEY_B)}"}
