"""`postroom node` as a real process: it sends what producers enqueue into a real SQLite
file (and PostgreSQL), stops gracefully on SIGTERM/SIGINT with exit 0, keeps the database
its own against a second node, refuses a bad sender before creating anything, and exits
non-zero when its supervisor ends without being asked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import Message, Producer, Status
from tests.conftest import eventually
from tests.integration.node_sender import OUT_ENV

ROOT = Path(__file__).resolve().parents[2]
SENDERS = "tests.integration.node_sender"
#: The node's --stop-timeout in these tests, and how long a test waits for it to exit after a signal.
STOP_TIMEOUT = 10.0
EXIT_WITHIN = STOP_TIMEOUT + 15.0

pytestmark = pytest.mark.timeout(120)


class Node:
    """One `python -m postroom_cli node` process; its JSON log lines read as they come."""

    def __init__(self, database: str, sender: str, out: Path, *options: str) -> None:
        command = [sys.executable, "-m", "postroom_cli", "--log-format", "json", "node",
                   "--database", database, "--sender", f"{SENDERS}:{sender}",
                   "--stop-timeout", str(STOP_TIMEOUT), *options]
        env = {**os.environ, OUT_ENV: str(out), "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log events of that name so far."""
        with self._changed:
            lines = list(self.lines)
        found = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # the error line `fail` prints
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
        return found

    def wait_for(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first event of that name, once logged; fails if the process ends first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.events(name):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {name} within {timeout} s:\n" + "\n".join(self.lines))
                self._changed.wait(min(left, 0.5))
        return self.events(name)[0]

    def exit_code(self, timeout: float = EXIT_WITHIN) -> int:
        """Its exit code, once it has exited (within `timeout` seconds) and its log is read."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def stderr(self) -> str:
        with self._changed:
            return "\n".join(self.lines)


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """The test's nodes; any still running at the end is killed."""
    started: list[Node] = []
    yield started
    for node in started:
        if node.proc.poll() is None:
            node.proc.kill()
        node.proc.wait(timeout=30)
        for stream in (node.proc.stdout, node.proc.stderr):
            if stream is not None:
                stream.close()


def _start(nodes: list[Node], database: str, sender: str, out: Path, *options: str) -> Node:
    node = Node(database, sender, out, *options)
    nodes.append(node)
    return node


def _sent(out: Path) -> list[tuple[int, int, str]]:
    """(pid, message id, user_id) of each line the senders wrote."""
    if not out.exists():
        return []
    return [(int(pid), int(mid), user) for pid, mid, user in
            (line.split() for line in out.read_text().splitlines())]


def _enqueue(producer: Producer, count: int) -> list[int]:
    accounts = ["+15550001001", "+15550001002", "+15550001003"]
    return [producer.enqueue(phone=accounts[i % 3], user_id=f"u{i}", text=f"hello {i}") for i in range(count)]


def _all_completed(producer: Producer, ids: list[int]) -> bool:
    return all(producer.get(i).status is Status.COMPLETED for i in ids)


def _run_and_stop(nodes: list[Node], database: str, sender: str, tmp_path: Path) -> Node:
    """A node sends 30 messages a producer enqueues, then SIGTERM stops it: exit 0."""
    out = tmp_path / "sent.txt"
    node = _start(nodes, database, sender, out)
    started = node.wait_for("node.started")
    with Producer(database) as producer:
        ids = _enqueue(producer, 30)
        eventually(lambda: _all_completed(producer, ids), timeout=30)
        node.proc.send_signal(signal.SIGTERM)
        assert node.exit_code() == 0, node.stderr()
        assert _all_completed(producer, ids)
    assert sorted(mid for _, mid, _ in _sent(out)) == ids  # each once
    assert {pid for pid, _, _ in _sent(out)} == {node.proc.pid}
    assert {user for _, _, user in _sent(out)} == {f"u{i}" for i in range(30)}
    assert node.events("node.stopping")[0]["signal"] == "SIGTERM"
    assert node.events("node.stopped")
    assert started["pid"] == node.proc.pid
    return node


def test_a_node_sends_what_producers_enqueue_and_stops_on_sigterm(
        database_url: str, tmp_path: Path, nodes: list[Node]) -> None:
    """Every message enqueued from another process is sent once and completed; SIGTERM
    stops the node with exit 0 and node.stopped logged (SQLite and PostgreSQL)."""
    node = _run_and_stop(nodes, database_url, "send", tmp_path)
    assert node.events("node.started")[0]["mode"] == "threads"


def test_a_node_runs_an_async_sender_on_its_event_loop(sqlite_url: str, tmp_path: Path,
                                                        nodes: list[Node]) -> None:
    """An `async def` sender: the node runs an asyncio loop and sends on it, and stops the same way."""
    node = _run_and_stop(nodes, sqlite_url, "send_async", tmp_path)
    assert node.events("node.started")[0]["mode"] == "asyncio"


@pytest.mark.parametrize("sender", ["slow", "slow_async"])
def test_a_second_signal_while_stopping_is_ignored_and_the_send_under_way_ends(
        sqlite_url: str, tmp_path: Path, nodes: list[Node], sender: str) -> None:
    """SIGTERM while a send is under way, then SIGINT: the second is logged and ignored, the
    send finishes and is recorded completed, exit 0."""
    out = tmp_path / "sent.txt"
    node = _start(nodes, sqlite_url, sender, out)
    node.wait_for("node.started")
    with Producer(sqlite_url) as producer:
        [message_id] = _enqueue(producer, 1)
        eventually(lambda: producer.get(message_id).status is Status.PROCESSING, timeout=30, interval=0.005)
        node.proc.send_signal(signal.SIGTERM)
        node.wait_for("node.stopping")
        node.proc.send_signal(signal.SIGINT)
        assert node.exit_code() == 0, node.stderr()
        message: Message = producer.get(message_id)
    assert message.status is Status.COMPLETED
    assert [mid for _, mid, _ in _sent(out)] == [message_id]
    ignored = node.events("node.signal_ignored")
    assert ignored and ignored[0]["signal"] == "SIGINT", node.stderr()
    assert node.events("node.stopped")[0]["signal"] == "SIGTERM"


def test_a_bad_sender_exits_2_without_creating_the_database(tmp_path: Path, nodes: list[Node]) -> None:
    """A sender that is not there: exit 2, its name and what failed on stderr, no file made."""
    database = tmp_path / "never.db"
    node = _start(nodes, f"sqlite:///{database}", "no_such_sender", tmp_path / "sent.txt")
    assert node.exit_code() == 2
    assert f"module '{SENDERS}' has no attribute 'no_such_sender'" in node.stderr()
    assert not database.exists()


def test_a_second_node_on_the_same_sqlite_file_is_refused(sqlite_url: str, tmp_path: Path,
                                                         nodes: list[Node]) -> None:
    """While one node runs, a second on its file exits 1 with DatabaseLocked; the first goes on."""
    out = tmp_path / "sent.txt"
    first = _start(nodes, sqlite_url, "send", out)
    first.wait_for("node.started")
    second = _start(nodes, sqlite_url, "send", out)
    assert second.exit_code() == 1
    assert "DatabaseLocked" in second.stderr()
    assert not second.events("node.started")
    with Producer(sqlite_url) as producer:
        ids = _enqueue(producer, 3)
        eventually(lambda: _all_completed(producer, ids), timeout=30)
    assert {pid for pid, _, _ in _sent(out)} == {first.proc.pid}
    first.proc.send_signal(signal.SIGTERM)
    assert first.exit_code() == 0, first.stderr()


def test_a_supervisor_that_ends_by_itself_fails_the_node(sqlite_url: str, tmp_path: Path,
                                                         nodes: list[Node]) -> None:
    """Its supervisor stops without a signal (here its sender stops it, as a fatal error
    would): the node exits 1, saying so, with the database released."""
    node = _start(nodes, sqlite_url, "stop_supervisor", tmp_path / "sent.txt")
    node.wait_for("node.started")
    with Producer(sqlite_url) as producer:
        _enqueue(producer, 1)
    assert node.exit_code() == 1
    assert node.events("node.supervisor_ended")
    assert "the supervisor stopped by itself" in node.stderr()
    # Released: another node owns the file at once.
    again = _start(nodes, sqlite_url, "send", tmp_path / "sent.txt")
    again.wait_for("node.started")
    again.proc.send_signal(signal.SIGINT)
    assert again.exit_code() == 0, again.stderr()


def test_the_health_file_is_written_while_running_and_removed_at_stop(
        sqlite_url: str, tmp_path: Path, nodes: list[Node]) -> None:
    """--health-file holds GetHealth's answer as JSON, rewritten every --health-interval,
    and is gone once the node has stopped."""
    health = tmp_path / "health.json"
    node = _start(nodes, sqlite_url, "send", tmp_path / "sent.txt",
                  "--health-file", str(health), "--health-interval", "0.2")
    node.wait_for("node.started")
    first = eventually(lambda: health.exists() and json.loads(health.read_text()), timeout=30)
    assert (first["degraded"], first["pid"]) == (False, node.proc.pid)
    eventually(lambda: json.loads(health.read_text())["updated_at"] != first["updated_at"], timeout=30)
    node.proc.send_signal(signal.SIGTERM)
    assert node.exit_code() == 0, node.stderr()
    assert not health.exists()
    assert not list(tmp_path.glob(".health.json.*"))  # no temporary file left


@pytest.mark.postgres
def test_two_nodes_with_nodes_share_the_accounts_and_the_last_one_takes_all_at_once(
        postgres_url: str, tmp_path: Path, nodes: list[Node]) -> None:
    """`postroom node --nodes` twice on one PostgreSQL database: both send (the accounts are
    shared by buckets), each message once; SIGTERM to one, and the other sends what comes
    next without waiting out the stopped one's 30 s lease."""
    out = tmp_path / "sent.txt"
    first = _start(nodes, postgres_url, "send", out, "--nodes", "--lease", "30", "--max-moves", "64")
    first.wait_for("node.started")
    second = _start(nodes, postgres_url, "send", out, "--nodes", "--lease", "30", "--max-moves", "64")
    second.wait_for("node.started")
    accounts = [f"+1555000{n:04d}" for n in range(40)]
    with Producer(postgres_url) as producer:
        eventually(lambda: len({pid for pid, _, _ in _sent(out)}) == 2 or _spread(producer, accounts, out),
                   timeout=60)
        ids = [int(line.split()[1]) for line in out.read_text().splitlines()]
        first.proc.send_signal(signal.SIGTERM)
        assert first.exit_code() == 0, first.stderr()
        stopped = time.monotonic()
        later = [producer.enqueue(phone=phone, user_id="after", text="x") for phone in accounts]
        eventually(lambda: _all_completed(producer, later), timeout=20)
        assert time.monotonic() - stopped < 15  # not the 30 s lease
    sent = [mid for _, mid, _ in _sent(out)]
    assert len(sent) == len(set(sent)) and set(later) <= set(sent) and set(ids) <= set(sent)
    assert {pid for pid, mid, _ in _sent(out) if mid in later} == {second.proc.pid}


def _spread(producer: Producer, accounts: list[str], out: Path) -> bool:
    """Enqueue one message per account (both nodes then send some); False until both have."""
    for phone in accounts:
        producer.enqueue(phone=phone, user_id="before", text="x")
    time.sleep(0.5)
    return len({pid for pid, _, _ in _sent(out)}) == 2
