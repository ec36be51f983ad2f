"""Checks of the numbers settings and commands carry, and instants that never overflow.

A setting is checked when it is built (a `ValidationError` naming the field), so that a
value no clock or datetime can hold never reaches an account's turn. An instant computed
from one still may fall past the year 9999 (a clock far in the future): `later` and
`earlier` stop at the ends of `datetime` instead of raising `OverflowError`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from postroom_common.errors import ValidationError

#: The longest duration a setting or a command may give, in seconds: 100 years.
MAX_SECONDS = 100 * 365.25 * 86_400
#: The largest count a setting may give: what an INTEGER column holds on PostgreSQL.
MAX_COUNT = 2**31 - 1

_LATEST = datetime.max.replace(tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def check_seconds(name: str, value: object, *, positive: bool = False, optional: bool = False,
                  maximum: float = MAX_SECONDS) -> None:
    """`value` is a number of seconds from 0 (above 0 with `positive`) to `maximum`, or None
    with `optional`; else `ValidationError` naming `name`."""
    check_number(name, value, positive=positive, optional=optional, maximum=maximum,
                 kind="a number of seconds")


def check_number(name: str, value: object, *, positive: bool = False, optional: bool = False,
                 maximum: float = math.inf, kind: str = "a finite number") -> None:
    """`value` is a finite int or float from 0 (above 0 with `positive`) to `maximum`, or None
    with `optional`; else `ValidationError` naming `name`."""
    if value is None and optional:
        return
    number = _as_float(value)
    if number is None or not _within(number, positive, maximum):
        most = "" if math.isinf(maximum) else f" and at most {_limit(maximum)}"
        raise ValidationError(f"{name} must be {kind} {'> 0' if positive else '>= 0'}{most}"
                              f"{' (or None)' if optional else ''}, not {_shown(value)}")


def check_count(name: str, value: object, *, minimum: int, maximum: int = MAX_COUNT) -> None:
    """`value` is an int from `minimum` to `maximum`; else `ValidationError` naming `name`."""
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise ValidationError(f"{name} must be an integer from {minimum} to {maximum}, not {_shown(value)}")


def check_timedelta(name: str, value: object) -> None:
    """`value` is a `timedelta` from 0 to `MAX_SECONDS`; else `ValidationError` naming `name`."""
    if not isinstance(value, timedelta) or not timedelta(0) <= value <= timedelta(seconds=MAX_SECONDS):
        raise ValidationError(f"{name} must be a timedelta from 0 to {_limit(MAX_SECONDS)}, "
                              f"not {_shown(value)}")


def later(moment: datetime, seconds: float) -> datetime:
    """`moment` plus `seconds` (>= 0), or the last instant a datetime holds if that is past it."""
    try:
        return moment + timedelta(seconds=seconds)
    except OverflowError:
        return _LATEST


def earlier(moment: datetime, delta: timedelta) -> datetime:
    """`moment` minus `delta`, or the first instant a datetime holds if that is before it."""
    try:
        return moment - delta
    except OverflowError:
        return _EARLIEST


def _as_float(value: object) -> float | None:
    """A number as a float; None for anything else (a bool, an int too large for a float)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _within(value: float, positive: bool, maximum: float) -> bool:
    return math.isfinite(value) and (value > 0 if positive else value >= 0) and value <= maximum


def _limit(maximum: float) -> str:
    return "100 years" if maximum == MAX_SECONDS else f"{maximum:g}"


def _shown(value: object) -> str:
    """The value for an error message: a short repr, never an error of its own (an int of
    5,000 digits has no str)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - the caller's object; its type says enough
        return f"<{type(value).__name__}>"
    return text if len(text) <= 60 else f"{text[:57]}..."
