"""The README's python blocks, run as a reader pastes them.

Each block meant to run is taken from README.md and run for real, with only what a reader
supplies replaced: their bot (a stub whose `send_message` records the call and answers
status 200), their sender, and the database URL (a SQLite file under tmp_path). A block
that is a piece of a larger program is marked `<!-- fragment -->` on the line above it.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from postroom_common.buckets import BUCKETS
from storage import Storage, open_database
from supervisor import Enqueue, GetHealth, GetMessage, Message, Status, SupervisorSettings
from tests.conftest import eventually

README = Path(__file__).resolve().parents[2] / "README.md"
#: The sections whose python block is run here.
RUN = ("Quickstart", "Settings", "Several nodes (PostgreSQL)", "Metrics")
#: Each block runs in a few seconds; this bounds one that waits out a timeout.
pytestmark = pytest.mark.timeout(30)


class StubBot:
    """A bot whose every message goes through: `send_message` records it, answers status 200."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str]] = []
        self._lock = threading.Lock()

    def send_message(self, chat_id: Any, text: str) -> SimpleNamespace:
        with self._lock:
            self.calls.append((chat_id, text))
        return SimpleNamespace(status=200)


def readme_blocks() -> list[tuple[str, str, bool]]:
    """Every python block of the README: (its section's heading, its code, marked a fragment)."""
    blocks, heading, previous = [], "", ""
    lines = iter(README.read_text(encoding="utf-8").splitlines())
    for line in lines:
        if line.startswith("## "):
            heading = line[3:].strip()
        elif line.strip() == "```python":
            code = "\n".join(iter(lambda: next(lines), "```"))
            blocks.append((heading, code + "\n", previous.startswith("<!-- fragment")))
        if line.strip():
            previous = line.strip()
    return blocks


def python_block(section: str) -> str:
    """The one python block, not a fragment, under `## section`."""
    found = [code for heading, code, fragment in readme_blocks() if heading == section and not fragment]
    assert len(found) == 1, f"{len(found)} python blocks to run under '## {section}'"
    return found[0]


def substituted(code: str, old: str, new: str) -> str:
    """`code` with `old` replaced, which must be there (or the block would run on the reader's
    database, not the test's)."""
    assert old in code, f"{old} is no longer in the block"
    return code.replace(old, new)


def run(code: str, section: str, **names: Any) -> dict[str, Any]:
    """Run a block as a script whose globals hold `names`; its globals afterwards."""
    namespace: dict[str, Any] = {"__name__": "__readme__", **names}
    exec(compile(code, f"README.md, {section}", "exec"), namespace)
    return namespace


def test_the_quickstart_runs_to_its_end_in_seconds(tmp_path: Path) -> None:
    """The Quickstart, with a stub bot and a database under tmp_path, sends every message (the
    scheduled one too), drains to 0 without waiting out its timeout, and stops."""
    bot, url = StubBot(), f"sqlite:///{tmp_path}/postroom.db"
    code = substituted(python_block("Quickstart"), '"sqlite:///postroom.db"', repr(url))
    started = time.monotonic()
    names = run(code, "Quickstart", bot=bot)
    assert time.monotonic() - started < 20  # far below Drain's timeout
    assert names["left"] == 0 and not names["ref"].is_alive()
    assert len(bot.calls) == 5  # one, one scheduled, a broadcast to three
    store = Storage(open_database(url))
    assert store.stats().by_status[Status.COMPLETED] == store.stats().total == 5
    store.close()


def test_the_settings_snippet_runs_as_pasted(tmp_path: Path) -> None:
    """The Settings snippet, its PostgreSQL URL replaced by a SQLite file and given a sender,
    makes every setting it shows and starts a supervisor that sends."""
    sent = threading.Event()
    url = f"sqlite:///{tmp_path}/postroom.db"
    code = substituted(python_block("Settings"), '"postgresql://user@db-host/postroom"', repr(url))

    def send(message: Message) -> None:
        sent.set()

    names = run(code, "Settings", send=send)
    ref = names["ref"]
    try:
        assert isinstance(names["settings"], SupervisorSettings) and not ref.ask(GetHealth()).degraded
        message_id = ref.ask(Enqueue(phone="+15550001", user_id="42", text="hi"))
        assert sent.wait(10)
        eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.COMPLETED)
    finally:
        ref.stop()


def test_the_metrics_snippet_serves_metrics_over_http(tmp_path: Path) -> None:
    """The Metrics snippet, on a free port and a SQLite file: `/metrics` answers over HTTP with
    the completed message counted and the queue depth read from the database."""
    url = f"sqlite:///{tmp_path}/postroom.db"
    code = substituted(python_block("Metrics"), '"sqlite:///postroom.db"', repr(url))
    code = substituted(code, "start_http_server(9464,", "start_http_server(0,")
    names = run(code, "Metrics", send=lambda message: None)
    ref, server = names["ref"], names["server"]
    try:
        message_id = ref.ask(Enqueue(phone="+15550001", user_id="42", text="hi"))
        eventually(lambda: ref.ask(GetMessage(message_id)).status is Status.COMPLETED)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10) as page:
            text = page.read().decode()
        assert 'postroom_messages_total{outcome="completed"} 1.0' in text
        assert 'postroom_queue_messages{status="completed"} 1.0' in text
    finally:
        ref.stop()
        server.shutdown()
        server.server_close()
        names["thread"].join()


@pytest.mark.postgres
def test_the_nodes_snippet_starts_a_node_that_takes_every_bucket_and_sends(postgres_url: str) -> None:
    """The Several nodes snippet on the test's PostgreSQL database: a node alone takes every
    bucket and sends."""
    section = "Several nodes (PostgreSQL)"
    code = substituted(python_block(section), '"postgresql://user@db-host/postroom"', repr(postgres_url))
    sent = threading.Event()
    names = run(code, section, send=lambda message: sent.set())
    ref = names["ref"]
    try:
        eventually(lambda: ref.ask(GetHealth()).buckets_held == BUCKETS)
        ref.ask(Enqueue(phone="+15550001", user_id="42", text="hi"))
        assert sent.wait(10)
    finally:
        ref.stop()


def test_every_python_block_is_run_here_or_marked_a_fragment() -> None:
    """A python block of the README is either one run above or marked `<!-- fragment -->` (a
    piece of a larger program, such as one that awaits inside the bot's loop)."""
    unmarked = [heading for heading, _, fragment in readme_blocks() if not fragment]
    assert sorted(unmarked) == sorted(RUN)
