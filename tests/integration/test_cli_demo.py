"""The `postroom` command end to end, in process, on a real SQLite file under tmp_path."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest
import structlog

from postroom_cli.main import main
from postroom_cli.status import read_stats
from storage import FINAL_STATUSES, Status
from supervisor import Enqueue, Supervisor


@pytest.fixture(autouse=True)
def _isolate_globals() -> Iterator[None]:
    """Stop every actor and undo the CLI's global logging configuration after each test."""
    root, pykka_logger = logging.getLogger(), logging.getLogger("pykka")
    saved = (list(root.handlers), root.level, pykka_logger.level)
    yield
    pykka.ActorRegistry.stop_all()
    structlog.reset_defaults()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    pykka_logger.setLevel(saved[2])


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


def test_demo_starts_from_an_empty_file_unless_told_to_keep(tmp_path: Path) -> None:
    """A second demo run deletes the first one's rows; with --keep it adds to them."""
    url = f"sqlite:///{tmp_path}/demo.db"
    assert _demo(url, "--messages", "20") == 0
    assert _demo(url, "--messages", "20") == 0
    assert read_stats(url).total == 20
    assert _demo(url, "--messages", "20", "--keep") == 0
    assert read_stats(url).total == 40


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
    # This supervisor stands for another process: its actors bind their loggers now, and
    # must not print into the stdout that the status output is read from.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    ref = Supervisor.start(url, lambda message: None)
    try:
        for n in range(3):
            ref.ask(Enqueue(phone="+15550001234", user_id=f"u{n}", text="hi"))
        assert _status_json(url, capsys)["total"] == 3
        assert main(["status", "--database", url]) == 0
    finally:
        ref.stop()
    out = capsys.readouterr().out
    assert "+15*******34" in out and "+15550001234" not in out


def test_demo_exits_1_when_messages_are_still_open_at_the_timeout(tmp_path: Path) -> None:
    """With a timeout shorter than the scheduled messages' delay, the demo exits 1."""
    url = f"sqlite:///{tmp_path}/demo.db"
    assert _demo(url, "--messages", "200", "--timeout", "0.01") == 1
    stats = read_stats(url)
    assert sum(stats.by_status[s] for s in FINAL_STATUSES) < stats.total
