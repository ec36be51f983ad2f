"""Settings are checked when they are made: a value no clock or datetime can hold is refused,
naming the field, instead of crashing an account later."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from actors.account_machine import AccountSettings
from actors.pacing import Pacing
from actors.retry import BackoffPolicy
from actors.validation import Limits
from postroom_common import ValidationError
from postroom_common.checks import MAX_SECONDS, earlier, later
from storage import SqliteSettings
from supervisor import NodeSettings, SupervisorSettings

NAN, INF = float("nan"), float("inf")
#: Seconds past anything a datetime can hold from now: accepted before, then an OverflowError.
HUGE = 1e12

BAD: list[tuple[type[Any], str, object]] = [
    *((BackoffPolicy, name, value) for name in ("base", "max_delay", "max_retry_after", "min_pause")
      for value in (0.0, -1.0, NAN, INF, HUGE, "1", True)),
    *((BackoffPolicy, "factor", value) for value in (0.0, -2.0, NAN, INF, 10**400)),
    *((BackoffPolicy, "jitter", value) for value in (-0.1, 1.0, NAN, "0.2")),
    *((AccountSettings, "send_timeout", value) for value in (0.0, -1.0, NAN, INF, HUGE)),
    *((AccountSettings, "window", value) for value in (0, -1, 2**31, 1.5, True)),
    *((AccountSettings, "storage_retry", value) for value in (0.0, -1.0, NAN, INF, HUGE, None)),
    *((AccountSettings, "idle_timeout", value) for value in (-1.0, NAN, INF, HUGE)),
    *((AccountSettings, "backoff", value) for value in (None, {"base": 1.0})),
    *((Limits, "max_text_length", value) for value in (0, -1, 2**31, 1.5)),
    *((Limits, "default_max_attempts", value) for value in (0, 2**31, None)),
    *((Limits, "max_field_length", value) for value in (0, 256)),  # its column holds 255
    *((Limits, "max_phone_length", value) for value in (0, 65)),  # its column holds 64
    *((Pacing, "rate", value) for value in (0.0, -1.0, NAN, INF, 10**400)),
    *((Pacing, "burst", value) for value in (0, -1, 1.5)),
    *((Pacing, "per_recipient_interval", value) for value in (-1.0, NAN, INF, HUGE)),
    *((SupervisorSettings, "max_restarts", value) for value in (-1, 1.5, 2**31)),
    *((SupervisorSettings, "restart_period", value) for value in (-1.0, NAN, INF, HUGE)),
    *((SupervisorSettings, "retention", value)
      for value in (timedelta(seconds=-1), timedelta(days=10**6), 3600, None)),
    *((SupervisorSettings, "cleanup_interval", value) for value in (0.0, -1.0, NAN, INF, HUGE)),
    *((SupervisorSettings, "send_threads", value) for value in (0, -1, 2.0)),
    *((SupervisorSettings, "slow_send_after", value) for value in (-1.0, NAN, INF, HUGE)),
    *((SupervisorSettings, "stop_timeout", value) for value in (-1.0, NAN, INF, HUGE)),
    *((SupervisorSettings, "account_threads", value) for value in (1, 0, 2.5)),
    *((SupervisorSettings, "pause_check_interval", value) for value in (0.0, NAN, INF, HUGE)),
    *((SupervisorSettings, "suspect_timeout", value) for value in (-1.0, NAN, INF, HUGE)),
    *((SupervisorSettings, "commit_delay", value) for value in (-0.001, NAN, INF, HUGE)),
    *((SqliteSettings, "busy_timeout", value) for value in (-1.0, NAN, INF, HUGE)),
    *((NodeSettings, "lease", value) for value in (0.0, 0.5, -1.0, NAN, INF, HUGE, "15")),
    *((NodeSettings, "max_moves", value) for value in (0, -1, 1.5, 2**31)),
    *((NodeSettings, "max_clock_skew", value) for value in (0.0, NAN, INF, HUGE)),
]


@pytest.mark.parametrize(("settings", "field", "value"), BAD,
                         ids=[f"{s.__name__}.{f}={v!r:.20}" for s, f, v in BAD])
def test_a_setting_out_of_range_is_refused_naming_its_field(settings: type[Any], field: str,
                                                            value: object) -> None:
    """NaN, infinite, negative, huge or mistyped: a ValidationError that names the field, when
    the settings are made."""
    with pytest.raises(ValidationError, match=rf"{settings.__name__}\.{field} must be"):
        settings(**{field: value})


@pytest.mark.parametrize("settings", [
    BackoffPolicy(base=MAX_SECONDS, max_delay=MAX_SECONDS, max_retry_after=MAX_SECONDS),
    AccountSettings(send_timeout=None, idle_timeout=None, window=2**31 - 1),
    AccountSettings(idle_timeout=0),  # an account stops as soon as it has nothing due
    Pacing(rate=1e-9, per_recipient_interval=0),
    SupervisorSettings(retention=timedelta(0), cleanup_interval=None, pause_check_interval=None,
                       max_restarts=0, commit_delay=0, stop_timeout=0),
    SupervisorSettings(retention=timedelta(seconds=MAX_SECONDS)),
    Limits(max_field_length=255, max_phone_length=64, default_max_attempts=2**31 - 1),
    NodeSettings(lease=1.0, max_moves=1, max_clock_skew=MAX_SECONDS),
], ids=repr)
def test_the_edges_of_each_range_are_accepted(settings: object) -> None:
    """Zero where it means something, None where it means "never", and the largest values."""
    assert settings is not None


LAST = datetime.max.replace(tzinfo=UTC)
FIRST = datetime.min.replace(tzinfo=UTC)


def test_an_instant_past_the_ends_of_datetime_stops_there() -> None:
    """A delay added to the year 9999, or a retention taken from year 1, gives the last or first
    instant a datetime holds, never an OverflowError."""
    assert later(LAST - timedelta(seconds=1), 2.0) == LAST
    assert later(datetime(2030, 1, 1, tzinfo=UTC), INF) == LAST
    assert later(datetime(2030, 1, 1, tzinfo=UTC), 1.5) == datetime(2030, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)
    assert earlier(FIRST + timedelta(days=1), timedelta(days=7)) == FIRST
    assert earlier(datetime(2030, 1, 8, tzinfo=UTC), timedelta(days=7)) == datetime(2030, 1, 1, tzinfo=UTC)
