"""postroom is a library: quiet until its host configures logging, then its events reach the host."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from supervisor import Enqueue, GetMessage, Status
from tests.conftest import LogCapture, eventually
from tests.integration.helpers import RecordingSender, start

# A bot that never configured logging: enqueues, waits for the send, prints its own line.
_UNCONFIGURED_BOT = textwrap.dedent("""
    import sys, threading
    from supervisor import Enqueue, GetMessage, Status, Supervisor, TransientError
    sent = threading.Event()
    calls = []
    def send(message):
        calls.append(message.id)
        if len(calls) == 1:
            raise TransientError("first attempt fails: a warning-free retry")
        sent.set()
    ref = Supervisor.start(sys.argv[1], send)
    message_id = ref.ask(Enqueue(phone="+15550001", user_id="42", text="hi"))
    print("bot: enqueued", flush=True)
    assert sent.wait(30)
    while ref.ask(GetMessage(message_id)).status is not Status.COMPLETED:
        pass
    ref.stop()
    print("bot: done", flush=True)
""")


@pytest.fixture(autouse=True)
def _unconfigured_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def test_an_unconfigured_host_sees_no_output_from_postroom(tmp_path: Path) -> None:
    """A process that configured no logging gets nothing from postroom on stdout or stderr
    while it enqueues, retries and sends: its own prints stay whole lines."""
    result = subprocess.run(
        [sys.executable, "-c", _UNCONFIGURED_BOT, f"sqlite:///{tmp_path}/bot.db"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["bot: enqueued", "bot: done"]
    assert result.stderr == ""


def test_a_host_that_configures_logging_gets_postroom_records(
        sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """With stdlib logging at INFO, the events are records of `postroom.*` loggers carrying
    the event name and its fields, the phone masked and the text absent."""
    caplog.set_level(logging.INFO, logger="postroom")
    sender = RecordingSender()
    ref = start(sqlite_url, sender)
    message_id = ref.ask(Enqueue(phone="+15550001234", user_id="42", text="secret words"))
    sender.wait_for(1)
    eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.COMPLETED)
    ref.stop()
    records = {r.postroom_event: r for r in caplog.records if r.name.startswith("postroom.")}  # type: ignore[attr-defined]
    assert {"message.enqueued", "message.sent", "account.started"} <= set(records)
    sent = records["message.sent"]
    assert sent.name == "postroom.account" and sent.levelno == logging.INFO
    assert sent.postroom_fields["message_id"] == message_id  # type: ignore[attr-defined]
    assert "message.sent" in sent.getMessage() and f"message_id={message_id}" in sent.getMessage()
    text = caplog.text
    assert "+15550001234" not in text and "secret words" not in text


def test_levels_the_host_disables_cost_no_record(sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """With the `postroom` logger at WARNING, no INFO record is made at all."""
    caplog.set_level(logging.WARNING, logger="postroom")
    sender = RecordingSender()
    ref = start(sqlite_url, sender)
    ref.ask(Enqueue(phone="+15550001234", user_id="42", text="hi"))
    sender.wait_for(1)
    ref.stop()
    assert not [r for r in caplog.records if r.name.startswith("postroom.") and r.levelno < logging.WARNING]


def test_a_host_that_configures_structlog_gets_the_events_through_it(
        sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Once the host configures structlog, events go through its processors and not to stdlib."""
    caplog.set_level(logging.INFO, logger="postroom")
    capture = LogCapture()
    structlog.configure(processors=[capture])
    sender = RecordingSender()
    ref = start(sqlite_url, sender)
    ref.ask(Enqueue(phone="+15550001234", user_id="42", text="hi"))
    sender.wait_for(1)
    eventually(lambda: capture.events("message.sent"))
    ref.stop()
    assert capture.events("message.enqueued")[0]["account"].startswith("+15")
    assert not [r for r in caplog.records if r.name.startswith("postroom.")]
