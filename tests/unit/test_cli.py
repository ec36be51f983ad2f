"""The command line's pieces that need no database: log rendering, options, the simulated sender."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import structlog
from rich.console import Console

from actors.errors import PermanentError, RateLimited, TransientError
from postroom_cli.demo import (
    DEFAULT_DATABASE,
    DemoOptions,
    Rates,
    SenderCounts,
    SimulatedSender,
    _add_task,
    _progress,
    _show,
    options_from_args,
)
from postroom_cli.logconfig import configure_logging
from postroom_cli.main import build_parser
from postroom_common import Message, Priority, QueueStats, Status, ValidationError
from tests.integration.helpers import cli_globals_restored


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """structlog and the stdlib root logger are global: put them back after each test."""
    with cli_globals_restored():
        yield


def _message() -> Message:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    return Message(id=1, phone="+15550000001", user_id="user-1", text="hi", attachment=None,
                   priority=Priority.NORMAL, status=Status.PROCESSING, created_at=now,
                   scheduled_at=None, available_at=now, attempts=1, max_attempts=5,
                   last_error=None, completed_at=None, updated_at=now)


def _quiet_sender(rates: Rates, seed: int = 1) -> tuple[SimulatedSender, list[float]]:
    slept: list[float] = []
    return SimulatedSender(rates, (0.001, 0.005), random.Random(seed), sleep=slept.append), slept


# -- logging ------------------------------------------------------------------------------


def test_json_format_writes_one_object_per_line_with_event_and_fields() -> None:
    """With format=json every event is one JSON line: event, level, UTC timestamp and context."""
    stream = io.StringIO()
    configure_logging("json", stream, level="info")
    log = structlog.get_logger("postroom.test").bind(account="+15*******01~c5af")
    log.info("message.sent", message_id=7)
    log.warning("account.rate_limited", until="soon")
    lines = stream.getvalue().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert len(lines) == 2
    assert first["event"] == "message.sent" and first["message_id"] == 7
    assert first["account"] == "+15*******01~c5af" and first["level"] == "info"
    assert datetime.fromisoformat(first["timestamp"]).utcoffset() == timedelta(0)
    assert second["event"] == "account.rate_limited" and second["level"] == "warning"


def test_events_below_the_level_are_dropped() -> None:
    """At level warning, info and debug events write nothing."""
    stream = io.StringIO()
    configure_logging("json", stream, level="warning")
    log = structlog.get_logger("postroom.test")
    log.debug("noise")
    log.info("message.sent")
    log.error("account.crashed")
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["account.crashed"]


def test_auto_format_writes_json_when_the_stream_is_not_a_terminal() -> None:
    """format=auto on a stream that is not a TTY gives JSON lines."""
    stream = io.StringIO()
    configure_logging("auto", stream)
    structlog.get_logger().info("supervisor.recovered", accounts=3)
    assert json.loads(stream.getvalue())["accounts"] == 3


def test_console_format_writes_readable_text() -> None:
    """format=console gives a key=value line, not JSON, without colour codes off a terminal."""
    stream = io.StringIO()
    configure_logging("console", stream)
    structlog.get_logger().info("supervisor.recovered", accounts=3)
    line = stream.getvalue()
    assert "supervisor.recovered" in line and "accounts=3" in line
    assert "\x1b[" not in line and not line.lstrip().startswith("{")


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_logged_traceback_never_shows_the_frames_locals(fmt: str) -> None:
    """A crash logged with its traceback names the code, never the values its frames held
    (rich's console tracebacks show locals by default: a message's phone, text and key)."""
    stream = io.StringIO()
    configure_logging(fmt, stream)

    # Built from pieces, so that no source line a traceback quotes holds a whole value.
    canaries = ["+1555" + "9990001", "canary text " + "0xBEEF", "canary-key-" + "7f3a"]

    def send(phone: str, text: str) -> None:
        key = canaries[2]
        raise RuntimeError(f"failed ({len(phone) + len(text) + len(key)})")

    try:
        send(canaries[0], canaries[1])
    except RuntimeError:
        structlog.get_logger("postroom.test").exception("account.crashed")
    out = stream.getvalue()
    assert "RuntimeError" in out and "account.crashed" in out
    for canary in canaries:
        assert canary not in out


def test_unknown_format_is_refused() -> None:
    """A format other than auto, console or json is a ValueError."""
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", io.StringIO())


# -- options ------------------------------------------------------------------------------


def test_demo_options_are_parsed_into_demo_options() -> None:
    """Every demo option reaches DemoOptions, latency converted from milliseconds to seconds."""
    args = build_parser().parse_args([
        "demo", "--database", "sqlite:///x.db", "--keep", "--accounts", "3", "--messages", "40",
        "--failure-rate", "0.2", "--rate-limit-rate", "0.1", "--permanent-rate", "0.05",
        "--latency-ms", "2-8", "--max-attempts", "7", "--seed", "9", "--timeout", "5",
    ])
    assert options_from_args(args) == DemoOptions(
        database="sqlite:///x.db", keep=True, accounts=3, messages=40,
        rates=Rates(transient=0.2, rate_limited=0.1, permanent=0.05), latency=(0.002, 0.008),
        max_attempts=7, seed=9, timeout=5.0,
    )


def test_demo_defaults() -> None:
    """Without options the demo sends 2000 messages from 20 accounts to the default file."""
    options = options_from_args(build_parser().parse_args(["demo"]))
    assert options == DemoOptions()
    assert options.database == DEFAULT_DATABASE
    assert (options.accounts, options.messages, options.latency) == (20, 2000, (0.001, 0.005))
    assert options.rates == Rates(transient=0.05, rate_limited=0.01, permanent=0.0)


def test_verbose_is_off_by_default_and_keeps_the_demo_at_error_level() -> None:
    """`demo` parses --verbose (default off); only then does it log warnings such as rate limits."""
    from postroom_cli.main import _log_level

    parser = build_parser()
    assert _log_level(parser.parse_args(["demo"])) == "error"
    assert _log_level(parser.parse_args(["demo", "--verbose"])) == "warning"
    assert _log_level(parser.parse_args(["--log-level", "debug", "demo", "--verbose"])) == "debug"
    assert _log_level(parser.parse_args(["status", "--database", "sqlite:///x.db"])) == "info"


def test_a_single_latency_value_is_a_fixed_latency() -> None:
    """--latency-ms 3 means exactly 3 ms."""
    args = build_parser().parse_args(["demo", "--latency-ms", "3"])
    assert args.latency_ms == (0.003, 0.003)


@pytest.mark.parametrize("argv", [
    ["--log-format", "json", "demo"],  # global option before the subcommand
    ["demo", "--log-format", "json"],  # and after it
])
def test_log_options_are_accepted_before_and_after_the_subcommand(argv: list[str]) -> None:
    """--log-format works on either side of the subcommand; --log-level defaults to None."""
    args = build_parser().parse_args(argv)
    assert (args.log_format, args.log_level) == ("json", None)


@pytest.mark.parametrize("argv", [
    ["demo", "--failure-rate", "1.5"],  # not a probability
    ["demo", "--rate-limit-rate", "-0.1"],  # not a probability
    ["demo", "--latency-ms", "5-1"],  # range upside down
    ["demo", "--latency-ms", "fast"],  # not a number
    ["demo", "--accounts", "0"],  # nobody to send from
    ["demo", "--timeout", "0"],  # no time to wait
    ["demo", "--log-level", "loud"],  # not a level
    ["status", "--watch", "0"],  # no interval between two refreshes
    ["status", "--watch", "nan"],  # not a number
    ["list", "--status", "lost"],  # not a status
    ["list", "--after-id", "-3"],  # not an id
    ["inspect", "first"],  # not an id
    ["inspect", str(2**63)],  # past a BIGINT
    ["health", "--max-age", "5x"],  # not a duration
    ["health", "--stuck-after=-75s"],  # negative
    [],  # a subcommand is required
])
def test_invalid_arguments_exit_with_a_usage_error(argv: list[str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """argparse refuses bad values with exit code 2 and a message on stderr."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert "error" in capsys.readouterr().err


def test_failure_rates_adding_up_to_more_than_one_are_refused() -> None:
    """The three failure probabilities share one roll, so their sum must not pass 1."""
    with pytest.raises(ValidationError, match="add up"):
        DemoOptions(rates=Rates(transient=0.6, rate_limited=0.3, permanent=0.2))


# -- the simulated sender ----------------------------------------------------------------


@pytest.mark.parametrize(("rates", "error", "kind"), [
    (Rates(transient=1.0, rate_limited=0.0), TransientError, "transient"),
    (Rates(transient=0.0, rate_limited=1.0), RateLimited, "rate_limited"),
    (Rates(transient=0.0, rate_limited=0.0, permanent=1.0), PermanentError, "permanent"),
])
def test_sender_raises_the_outcome_its_rates_choose(rates: Rates, error: type[Exception],
                                                    kind: str) -> None:
    """A rate of 1 makes every send raise that outcome, and the sender counts it."""
    sender, _ = _quiet_sender(rates)
    with pytest.raises(error):
        sender(_message())
    assert sender.counts() == SenderCounts(**{kind: 1})


def test_sender_rate_limit_asks_for_a_short_pause() -> None:
    """A simulated rate limit carries a retry_after well under a second."""
    sender, _ = _quiet_sender(Rates(transient=0.0, rate_limited=1.0))
    with pytest.raises(RateLimited) as limited:
        sender(_message())
    assert 0 < limited.value.retry_after < 1


def test_sender_delivers_and_sleeps_within_the_latency_range() -> None:
    """With no failure rates every send returns, after a latency drawn from the range."""
    sender, slept = _quiet_sender(Rates(transient=0.0, rate_limited=0.0))
    for _ in range(50):
        sender(_message())
    assert sender.counts() == SenderCounts(delivered=50)
    assert len(slept) == 50 and all(0.001 <= delay <= 0.005 for delay in slept)


def test_sender_with_the_same_seed_gives_the_same_outcomes() -> None:
    """Two senders seeded alike answer the same sequence of sends identically."""
    def outcomes(sender: SimulatedSender) -> list[str]:
        seen: list[str] = []
        for _ in range(40):
            try:
                sender(_message())
                seen.append("ok")
            except (TransientError, RateLimited) as error:
                seen.append(type(error).__name__)
        return seen

    rates = Rates(transient=0.3, rate_limited=0.2)
    assert outcomes(_quiet_sender(rates, seed=4)[0]) == outcomes(_quiet_sender(rates, seed=4)[0])


# -- the live display ----------------------------------------------------------------------


def _stats(**counts: int) -> QueueStats:
    by_status = {status: counts.get(status.value, 0) for status in Status}
    return QueueStats(by_status=by_status, by_account={"+15550000001": by_status})


def test_the_bar_says_sending_until_every_message_is_finished() -> None:
    """The progress bar is labelled "sending" while messages are open, "finished" once none is."""
    progress = _progress(Console(file=io.StringIO()))
    baseline = _stats()
    task = _add_task(progress, total=10)
    assert progress.tasks[0].description == "sending"
    _show(progress, task, _stats(pending=4, completed=6), baseline, SenderCounts(rate_limited=3))
    assert progress.tasks[0].description == "sending"
    assert "account pauses [magenta]3" in progress.counters
    _show(progress, task, _stats(completed=9, failed=1), baseline, SenderCounts(rate_limited=3))
    assert progress.tasks[0].description == "finished"
