"""PostgresSettings: the connect parameters every PostgreSQL connection of postroom gets,
and what a URL or the environment sets itself (no server needed: nothing connects)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from postroom_common import ValidationError
from storage import PostgresSettings, open_database

URL = "postgresql://postroom@db.invalid:5432/queue"


def params(url: str = URL, **options: Any) -> dict[str, Any]:
    return dict(open_database(url, **options).connect_params)


def test_defaults_bound_every_wait_of_a_connection() -> None:
    """Connect timeout, keepalives, tcp_user_timeout, and the server's statement and lock
    timeouts; a statement is cut on postroom's side a connect timeout after the server's."""
    got = params()
    assert {k: got[k] for k in ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
                                "keepalives_count", "tcp_user_timeout")} \
        == {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
            "keepalives_count": 3, "tcp_user_timeout": 15000}
    assert got["options"] == ("-c statement_timeout=30000 -c lock_timeout=5000"
                              " -c idle_in_transaction_session_timeout=10000")
    assert got["cursor_factory"].call_limits.answer_within == 35.0


def test_the_urls_own_parameters_and_the_environment_win(monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL's connect_timeout replaces postroom's, its options (and PGOPTIONS) come after
    postroom's -c so they win; PGCONNECT_TIMEOUT is left to libpq."""
    monkeypatch.setenv("PGOPTIONS", "-c search_path=queue")
    got = params(f"{URL}?connect_timeout=9&options=-c%20lock_timeout%3D0&sslmode=require")
    assert got["connect_timeout"] == 9 and got["sslmode"] == "require"
    assert got["options"] == ("-c statement_timeout=30000 -c lock_timeout=5000"
                              " -c idle_in_transaction_session_timeout=10000 -c search_path=queue"
                              " -c lock_timeout=0")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "11")
    assert "connect_timeout" not in params()


def test_read_only_and_no_statement_limit() -> None:
    """read_only adds its option; statement_timeout=None sets no server limit and no cut."""
    got = params(read_only=True, postgres=PostgresSettings(statement_timeout=None, lock_timeout=0.25))
    assert got["options"] == ("-c lock_timeout=250 -c idle_in_transaction_session_timeout=10000"
                              " -c default_transaction_read_only=on")
    assert got["cursor_factory"].call_limits.answer_within is None


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, "5", True])
@pytest.mark.parametrize("name", ["connect_timeout", "statement_timeout", "lock_timeout",
                                  "keepalives_idle", "keepalives_count", "tcp_user_timeout"])
def test_a_setting_that_is_not_a_positive_number_is_refused(name: str, value: Any) -> None:
    """Zero, negative, infinite, NaN or non-numbers are refused with ValidationError."""
    with pytest.raises(ValidationError, match=name):
        PostgresSettings(**{name: value})
