"""`postroom node`'s command line, without a database: the sender spec, the settings, the
masked URL and the health file."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import Health
from postroom_cli.main import build_parser, main
from postroom_cli.node import HealthFile, SenderError, load_sender, settings_from, shown_database
from postroom_common import Delivery, ValidationError
from supervisor import NodeSettings, SupervisorSettings
from tests.integration.helpers import cli_globals_restored

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test in tmp_path as the current directory, with sys.path and sys.modules put back
    and the CLI's logging configuration undone."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    with cli_globals_restored():
        yield


def _module(tmp_path: Path, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)


# -- the sender -------------------------------------------------------------------------------


def test_a_sender_is_imported_from_the_current_directory(tmp_path: Path) -> None:
    """MODULE:ATTRIBUTE finds a module in the current directory, as `python -m` would, and
    a dotted ATTRIBUTE reaches an object's method."""
    _module(tmp_path, "node_bot_a", "def send(m):\n    return None\n"
                                    "class Client:\n    def send(self, m):\n        return None\n"
                                    "client = Client()\n")
    assert load_sender("node_bot_a:send").__name__ == "send"  # type: ignore[union-attr]
    assert load_sender("node_bot_a:client.send").__name__ == "send"  # type: ignore[union-attr]


@pytest.mark.parametrize(("spec", "message"), [
    ("node_bot_b", "MODULE:ATTRIBUTE"),  # no colon
    (":send", "MODULE:ATTRIBUTE"),  # no module
    ("node_bot_b:", "MODULE:ATTRIBUTE"),  # no attribute
    ("no_such_module_xyz:send", "module 'no_such_module_xyz' not found"),
    ("no_such_package_xyz.sending:send", "module 'no_such_package_xyz.sending' not found"),
    ("node_bot_b:missing", "module 'node_bot_b' has no attribute 'missing'"),
    ("node_bot_b:client.missing", "has no attribute 'client.missing'"),
    ("node_bot_b:TEXT", "'TEXT' is not callable (it is a str)"),
    ("node_bot_c:send", "importing module 'node_bot_c' failed: ModuleNotFoundError: "
                        "No module named 'a_dependency_xyz'"),  # the module is there, its import is not
    ("node_bot_d:send", "importing module 'node_bot_d' failed: ZeroDivisionError"),
])
def test_a_bad_sender_spec_says_what_failed(tmp_path: Path, spec: str, message: str) -> None:
    """Each way MODULE:ATTRIBUTE can fail is a SenderError saying which."""
    _module(tmp_path, "node_bot_b", "def send(m):\n    return None\nTEXT = 'hi'\nclient = object()\n")
    _module(tmp_path, "node_bot_c", "import a_dependency_xyz\ndef send(m):\n    return None\n")
    _module(tmp_path, "node_bot_d", "1 / 0\n")
    with pytest.raises(SenderError) as raised:
        load_sender(spec)
    assert message in str(raised.value)


def test_a_bad_sender_exits_2_before_the_database_is_opened(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`postroom node` with a sender that is not there exits 2, naming it, and creates nothing."""
    database = tmp_path / "never.db"
    code = main(["node", "--database", f"sqlite:///{database}", "--sender", "nowhere_xyz:send"])
    assert code == 2
    assert "--sender nowhere_xyz:send: module 'nowhere_xyz' not found" in capsys.readouterr().err
    assert not database.exists()


def test_no_database_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """Neither --database nor POSTROOM_DATABASE: exit 2 naming both."""
    monkeypatch.delenv("POSTROOM_DATABASE", raising=False)
    _module(tmp_path, "node_bot_e", "def send(m):\n    return None\n")
    assert main(["node", "--sender", "node_bot_e:send"]) == 2
    assert "POSTROOM_DATABASE" in capsys.readouterr().err


# -- the settings -----------------------------------------------------------------------------


def _settings(*options: str) -> SupervisorSettings:
    return settings_from(build_parser().parse_args(["node", "--sender", "m:a", *options]))


def test_no_options_are_the_default_settings() -> None:
    """Options left out leave SupervisorSettings' defaults."""
    assert _settings() == SupervisorSettings()


def test_the_options_map_to_their_settings() -> None:
    """Each option sets its SupervisorSettings field; durations are read as seconds."""
    settings = _settings("--delivery", "at-most-once", "--account-threads", "3", "--send-threads", "7",
                         "--stop-timeout", "2.5", "--cleanup-interval", "5m", "--send-timeout", "30s")
    assert settings.delivery is Delivery.AT_MOST_ONCE
    assert (settings.account_threads, settings.send_threads) == (3, 7)
    assert (settings.stop_timeout, settings.cleanup_interval) == (2.5, 300.0)
    assert settings.account.send_timeout == 30.0
    assert _settings("--delivery", "at-least-once").delivery is Delivery.AT_LEAST_ONCE


def test_nodes_and_their_settings() -> None:
    """--nodes runs as a node of several; --lease and --max-moves set its NodeSettings, and
    need it."""
    assert _settings("--nodes").nodes == NodeSettings()
    assert _settings("--nodes", "--lease", "30s", "--max-moves", "2").nodes == NodeSettings(lease=30.0,
                                                                                           max_moves=2)
    with pytest.raises(ValidationError, match="--lease is a setting of --nodes"):
        _settings("--lease", "30")
    with pytest.raises(ValidationError, match=r"NodeSettings\.lease"):
        _settings("--nodes", "--lease", "0")


def test_none_turns_off_cleanup_and_the_send_timeout() -> None:
    """`none` is no automatic cleanup, no send timeout (the settings' None)."""
    settings = _settings("--cleanup-interval", "none", "--send-timeout", "None")
    assert settings.cleanup_interval is None
    assert settings.account.send_timeout is None


@pytest.mark.parametrize(("options", "field"), [
    (["--account-threads", "1"], "SupervisorSettings.account_threads"),  # at least 2
    (["--send-threads", "0"], "SupervisorSettings.send_threads"),
    (["--stop-timeout", "-1"], "SupervisorSettings.stop_timeout"),
    (["--stop-timeout", "nan"], "SupervisorSettings.stop_timeout"),
    (["--cleanup-interval", "0"], "SupervisorSettings.cleanup_interval"),  # positive
    (["--send-timeout", "inf"], "send_timeout"),
])
def test_a_setting_out_of_range_names_its_field(options: list[str], field: str) -> None:
    """SupervisorSettings' own check refuses it, naming the field."""
    with pytest.raises(ValidationError, match=field):
        _settings(*options)


def test_a_setting_out_of_range_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Through `postroom node`: exit 2, the field named, nothing created."""
    _module(tmp_path, "node_bot_f", "def send(m):\n    return None\n")
    database = tmp_path / "never.db"
    code = main(["node", "--database", f"sqlite:///{database}", "--sender", "node_bot_f:send",
                 "--account-threads", "1"])
    assert code == 2
    assert "SupervisorSettings.account_threads" in capsys.readouterr().err
    assert not database.exists()


@pytest.mark.parametrize("options", [
    ["--delivery", "exactly-once"], ["--account-threads", "two"], ["--stop-timeout", "soon"],
])
def test_an_unreadable_option_is_a_usage_error(options: list[str]) -> None:
    """argparse refuses it: exit 2."""
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(["node", "--sender", "m:a", *options])
    assert raised.value.code == 2


# -- the URL in the logs and the health file --------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    ("sqlite:////var/lib/postroom.db", "sqlite:////var/lib/postroom.db"),
    ("postgresql://bot@db:5432/postroom", "postgresql://bot@db:5432/postroom"),
    ("postgresql://bot:s3cret@db/postroom", "postgresql://bot:***@db/postroom"),
    ("postgresql://bot:p%40ss@db/postroom?sslmode=require", "postgresql://bot:***@db/postroom?sslmode=require"),
    ("postgresql://db/postroom?user=bot&password=s3cret", "postgresql://db/postroom?user=bot&password=***"),
])
def test_the_database_is_shown_without_its_password(url: str, shown: str) -> None:
    """A password, in the user part or a query parameter, never reaches a log line."""
    assert shown_database(url) == shown


def test_the_health_file_is_one_json_object_replaced_whole(tmp_path: Path) -> None:
    """Written through a temporary file renamed over it: GetHealth's fields, the writer's pid
    and when; nothing else left in the directory; removed, and removing again is harmless."""
    health_file = HealthFile(tmp_path / "health.json", 1.0)
    health_file.check()
    health_file.write(Health(degraded=False, last_error=None, accounts_running=2, parked_accounts=()))
    health_file.write(Health(degraded=True, last_error="disk full", accounts_running=1, parked_accounts=()))
    data = json.loads((tmp_path / "health.json").read_text())
    assert (data["degraded"], data["last_error"], data["accounts_running"]) == (True, "disk full", 1)
    assert data["pid"] == os.getpid() and data["updated_at"].endswith("+00:00")
    assert data["abandoned_sends"]["count"] == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".json", ".tmp")) == ["health.json"]
    health_file.remove()
    health_file.remove()
    assert not (tmp_path / "health.json").exists()


def test_a_health_file_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    """Refused before the node starts: a probe would never find it."""
    with pytest.raises(ValidationError, match="does not exist"):
        HealthFile(tmp_path / "nowhere" / "health.json", 1.0).check()
