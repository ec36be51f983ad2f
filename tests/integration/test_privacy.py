"""Privacy end to end: with every logger at DEBUG, no phone, recipient or text leaks anywhere.

The host here is as careless as it gets: stdlib logging at DEBUG on the root, peewee
and pykka loggers, structlog rendering every key to the same buffer, a sender whose
exceptions quote the message. The canary values must appear in neither the logs nor
any stored `last_error`, and the database files must be private to their owner.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from actors.errors import PermanentError, TransientError
from supervisor import (
    CancelMessage,
    Enqueue,
    FakeClock,
    GetHealth,
    GetMessage,
    GetStats,
    ListMessages,
    Message,
    Priority,
    Status,
    ValidationError,
)
from tests.conftest import eventually
from tests.integration.helpers import RecordingSender, account_ref, start

CANARY_PHONE = "+19995550123"
CANARY_TEXT = "canary-text-7f3a"
CANARY_USER = "canary-user-91b2"
CANARIES = (CANARY_PHONE, CANARY_TEXT, CANARY_USER)
STDLIB_LOGGERS = ("", "peewee", "pykka")  # "" is the root logger


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    """Everything stdlib logging (DEBUG, root/peewee/pykka) and structlog emit, in one buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s:%(levelname)s:%(message)s"))
    saved = {name: logging.getLogger(name).level for name in STDLIB_LOGGERS}
    for name in STDLIB_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.format_exc_info,
                    structlog.processors.KeyValueRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=buffer),
        cache_logger_on_first_use=False,
    )
    yield buffer
    structlog.reset_defaults()
    for name in STDLIB_LOGGERS:
        logger = logging.getLogger(name)
        logger.removeHandler(handler)
        logger.setLevel(saved[name])
    handler.close()


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask, so 0600 must come from postroom itself."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def quoting_sender(message: Message, call: int) -> None:
    """Fails the way real senders do: with the recipient and the text in the exception."""
    detail = f"chat {message.user_id} via {message.phone} refused {message.text!r}"
    if message.text == CANARY_TEXT and message.priority.name == "HIGH":
        raise PermanentError(f"blocked: {detail}")
    if message.text == CANARY_TEXT and call == 1:
        raise TransientError(f"timeout: {detail}")


def canary(ref: Any, **kw: Any) -> int:
    return int(ref.ask(Enqueue(phone=CANARY_PHONE, user_id=CANARY_USER, text=CANARY_TEXT, **kw)))


def test_no_canary_in_debug_logs_or_stored_errors_and_files_are_0600(
        tmp_path: Path, log_buffer: io.StringIO, open_umask: None) -> None:
    """Through retry, success, cancel, stats and failure no canary is logged or stored; files are 0600."""
    clock = FakeClock()
    sender = RecordingSender(quoting_sender)
    db = tmp_path / "postroom.db"
    ref = start(f"sqlite:///{db}", sender, clock=clock)

    retried = canary(ref)  # transient failure, then success
    first = eventually(lambda: (m := ref.ask(GetMessage(retried))).status is Status.RETRYING and m)
    clock.advance(1)
    eventually(lambda: ref.ask(GetMessage(retried)).status is Status.COMPLETED)
    cancelled = canary(ref, scheduled_at=clock.now() + timedelta(days=1))
    assert ref.ask(CancelMessage(cancelled)).status is Status.CANCELLED
    failed = canary(ref, priority=Priority.HIGH)  # permanent failure
    last = eventually(lambda: (m := ref.ask(GetMessage(failed))).status is Status.FAILED and m)
    with pytest.raises(ValidationError):
        canary(ref, priority="urgent")
    ref.tell(Enqueue(phone=CANARY_PHONE, user_id=CANARY_USER, text=CANARY_TEXT, max_attempts=0))
    eventually(lambda: "command.refused" in log_buffer.getvalue())  # told: refused in the log
    stats = ref.ask(GetStats())
    assert stats.by_account[CANARY_PHONE][Status.COMPLETED] == 1
    account_ref(CANARY_PHONE).tell("boom")  # a crash: pykka logs the traceback at ERROR
    eventually(lambda: "account.restarted" in log_buffer.getvalue())
    assert ref.ask(GetHealth()).parked_accounts == ()

    files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
    modes = {p.name: oct(stat.S_IMODE(os.stat(p).st_mode)) for p in files}  # while open: WAL exists
    listed = ref.ask(ListMessages(CANARY_PHONE))
    ref.stop()

    errors = [first.last_error, last.last_error] + [m.last_error for m in listed]
    assert first.last_error and first.last_error.startswith("TransientError: timeout:")
    assert last.last_error and last.last_error.startswith("PermanentError: blocked:")
    assert "[redacted]" in last.last_error
    for error in errors:
        for secret in CANARIES:
            assert secret not in (error or ""), error
    logged = log_buffer.getvalue()
    for event in ("message.enqueued", "message.retrying", "message.sent", "message.cancelled",
                  "message.failed", "command.refused", "account.crashed", "supervisor.stopped"):
        assert event in logged, f"{event} was not captured: the check below would prove nothing"
    assert "pykka:DEBUG:" in logged and "pykka:ERROR:" in logged
    for secret in CANARIES:
        assert secret not in logged, [line for line in logged.splitlines() if secret in line][:5]
    assert modes == {p.name: "0o600" for p in files}
    assert not Path(f"{db}.lock").exists()  # the owner lock is taken on the database file itself
