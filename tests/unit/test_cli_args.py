"""The arguments the operator's commands share (`postroom_cli._args`)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from postroom_cli._args import (
    DATABASE_ENV,
    database_url,
    duration_arg,
    json_text,
    parse_duration,
    parse_instant,
)
from postroom_common import Status, ValidationError

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30),  # seconds
    ("5m", 300),  # minutes
    ("2h", 7200),  # hours
    ("1d", 86_400),  # days
    ("0s", 0),  # nothing at all is a duration too
    (" 10m ", 600),  # surrounding blanks, as a shell variable may carry
])
def test_a_duration_is_a_whole_number_and_a_unit(text: str, seconds: int) -> None:
    """`30s`, `5m`, `2h` and `1d` read as that many seconds."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", [
    "-5m",  # negative
    "nan", "NaNs", "infs",  # not numbers
    "1.5h",  # a fraction
    "30",  # no unit
    "5 x", "5w", "",  # an unknown unit, or nothing
    "99999999999d",  # past 100 years
    "1e3s",  # an exponent
])
def test_anything_else_is_not_a_duration(text: str) -> None:
    """A sign, NaN, a fraction, a missing or unknown unit, or more than 100 years is a ValidationError."""
    with pytest.raises(ValidationError):
        parse_duration(text)


def test_a_bad_duration_option_is_a_usage_error_naming_the_forms(capsys: pytest.CaptureFixture[str]) -> None:
    """As an argparse type, a bad duration exits 2 with the forms it accepts."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-age", type=duration_arg)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--max-age=-1m"])
    assert exit_.value.code == 2 and "30s, 5m, 2h, 1d" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "expected"), [
    ("2h", NOW - timedelta(hours=2)),  # a duration ago
    ("2030-01-01T10:00:00+00:00", datetime(2030, 1, 1, 10, tzinfo=UTC)),  # ISO with offset
    ("2030-01-01T10:00:00Z", datetime(2030, 1, 1, 10, tzinfo=UTC)),  # ISO, Z
    ("2030-01-01T12:00:00+02:00", datetime(2030, 1, 1, 10, tzinfo=UTC)),  # another offset
    ("2030-01-01 10:00", datetime(2030, 1, 1, 10, tzinfo=UTC)),  # no offset: UTC
    ("2030-01-01", datetime(2030, 1, 1, tzinfo=UTC)),  # a date
])
def test_an_instant_is_iso_or_a_duration_ago(text: str, expected: datetime) -> None:
    """`--since`/`--until` take ISO 8601 (UTC unless it says otherwise) or a duration ago."""
    assert parse_instant(text, NOW) == expected


def test_an_instant_that_is_neither_is_refused() -> None:
    """Text that is neither ISO 8601 nor a duration is a ValidationError naming both forms."""
    with pytest.raises(ValidationError, match=r"ISO 8601.*duration"):
        parse_instant("yesterday", NOW)


def test_the_database_comes_from_the_option_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--database` wins over POSTROOM_DATABASE, which serves when the option is absent."""
    monkeypatch.setenv(DATABASE_ENV, "sqlite:///env.db")
    assert database_url(argparse.Namespace(database="sqlite:///opt.db")) == "sqlite:///opt.db"
    assert database_url(argparse.Namespace(database=None)) == "sqlite:///env.db"


@pytest.mark.parametrize("value", [None, "", "  "])
def test_no_database_anywhere_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """Neither the option nor the variable (or a blank one): a ValidationError naming both."""
    if value is None:
        monkeypatch.delenv(DATABASE_ENV, raising=False)
    else:
        monkeypatch.setenv(DATABASE_ENV, value)
    with pytest.raises(ValidationError, match=f"--database URL or set {DATABASE_ENV}"):
        database_url(argparse.Namespace(database=None))


def test_json_writes_instants_in_utc_and_enums_by_value() -> None:
    """Instants become ISO 8601 in UTC whatever their offset; enums their value."""
    moment = datetime(2030, 1, 1, 14, tzinfo=timezone(timedelta(hours=2)))
    assert json.loads(json_text({"at": moment, "status": Status.FAILED})) == {
        "at": "2030-01-01T12:00:00+00:00", "status": "failed"}


def test_json_escapes_what_a_terminal_would_obey() -> None:
    """Escape sequences, C1 and bidi controls in a value are written as JSON escapes, and read back whole."""
    text = "hi \x1b[2J \x9b \u202e ok é"
    written = json_text({"text": text})
    assert all(ord(c) < 0x7f for c in written) and json.loads(written) == {"text": text}
