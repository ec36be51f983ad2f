"""What the write commands share: durations and the database URL (no database needed)."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest

from postroom_cli._args import database_url, parse_duration
from postroom_common import ValidationError


@pytest.mark.parametrize(("text", "expected"), [
    ("30s", timedelta(seconds=30)),
    ("5m", timedelta(minutes=5)),
    ("2h", timedelta(hours=2)),
    ("1d", timedelta(days=1)),
    ("0s", timedelta(0)),  # cleanup --older-than 0s: every finished row
    (" 7d ", timedelta(days=7)),  # a shell's stray spaces
    ("36500d", timedelta(days=36500)),  # within 100 years
])
def test_a_duration_is_a_whole_number_and_a_unit(text: str, expected: timedelta) -> None:
    """s, m, h and d after a whole number make a timedelta."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [
    "", "5", "m", "-5m", "+5m", "1.5h", "nan", "NaNs", "inf", "5 m", "5M", "1w", "1h30m",
    "\u0661\u0662s",  # digits of another script (Arabic-Indic)
    "99999999999d",  # past what a datetime holds
    "36526d",  # past 100 years
])
def test_anything_else_is_not_a_duration(text: str) -> None:
    """A sign, a fraction, NaN, another unit or script, or more than 100 years: ValidationError."""
    with pytest.raises(ValidationError, match=r"duration|100 years"):
        parse_duration(text)


def test_the_database_comes_from_the_option_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """--database wins over POSTROOM_DATABASE; with neither (or blank), ValidationError."""
    monkeypatch.setenv("POSTROOM_DATABASE", "sqlite:///env.db")
    assert database_url(argparse.Namespace(database="sqlite:///flag.db")) == "sqlite:///flag.db"
    assert database_url(argparse.Namespace(database=None)) == "sqlite:///env.db"
    monkeypatch.setenv("POSTROOM_DATABASE", " ")
    with pytest.raises(ValidationError, match="POSTROOM_DATABASE"):
        database_url(argparse.Namespace(database=None))
    monkeypatch.delenv("POSTROOM_DATABASE")
    with pytest.raises(ValidationError, match="--database"):
        database_url(argparse.Namespace(database=None))
