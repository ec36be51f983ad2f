"""`postroom health`'s verdict and its bounded PostgreSQL URL (no database needed)."""

from __future__ import annotations

import urllib.parse

import pytest

from postroom_cli.health import Check, Result, Verdict, _bounded_url, _verdict


def _query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def test_the_url_gets_a_connect_and_a_statement_timeout() -> None:
    """Its credentials and options are kept; a connect timeout and a statement timeout are added."""
    url = _bounded_url("postgresql://bot:p%40ss@db.example:6432/queue?sslmode=require", 3.0)
    assert urllib.parse.urlsplit(url).netloc == "bot:p%40ss@db.example:6432"
    assert _query(url) == {"sslmode": "require", "connect_timeout": "3",
                           "options": "-c statement_timeout=3000"}


def test_timeouts_the_url_sets_are_its_own() -> None:
    """A connect_timeout or options the URL gives are left as they are."""
    url = _bounded_url("postgresql://h/db?connect_timeout=30&options=-c%20search_path%3Dq", 0.5)
    assert _query(url) == {"connect_timeout": "30", "options": "-c search_path=q"}


@pytest.mark.parametrize(("results", "verdict"), [
    ({"database": Result.OK, "owner": Result.OK}, Verdict.HEALTHY),  # all well
    ({"database": Result.OK, "owner": Result.UNKNOWN}, Verdict.HEALTHY),  # cannot tell: not a failure
    ({"database": Result.OK, "owner": Result.FAIL}, Verdict.DEGRADED),  # any other check failed
    ({"database": Result.FAIL, "owner": Result.SKIPPED}, Verdict.UNREACHABLE),  # no database
])
def test_the_verdict_follows_the_checks(results: dict[str, Result], verdict: Verdict) -> None:
    """The database failing is unreachable (2), any other failure degraded (1), else healthy (0)."""
    assert _verdict([Check(name, result, "") for name, result in results.items()]) is verdict
