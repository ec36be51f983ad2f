"""Backoff and the retry decision, as tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from actors.errors import AccountSuspended, PermanentError, RateLimited, TransientError
from actors.retry import BackoffPolicy, compute_backoff, decide, pause_for
from postroom_common import ValidationError

NOW = datetime(2030, 1, 1, tzinfo=UTC)


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


class _NoInit(RateLimited):
    def __init__(self) -> None:  # never calls RateLimited.__init__: no retry_after attribute
        pass


class _Unreadable(RateLimited):
    def __init__(self) -> None:
        pass

    @property
    def retry_after(self) -> float:  # type: ignore[override]
        raise KeyboardInterrupt


class _Worded(RateLimited):
    def __init__(self) -> None:
        self.retry_after = "soon"  # type: ignore[assignment]


class _Huge(RateLimited):
    def __init__(self) -> None:
        self.retry_after = 10**400  # type: ignore[assignment]


class _SuspendedNoInit(AccountSuspended):
    def __init__(self) -> None:
        pass


@pytest.mark.parametrize(
    ("attempts", "rand", "expected"),
    [
        (1, 0.0, 1.0),  # first failure: the base delay
        (2, 0.0, 2.0),  # doubles
        (3, 0.0, 4.0),
        (9, 0.0, 256.0),
        (10, 0.0, 300.0),  # capped at max_delay
        (50, 0.0, 300.0),  # no overflow far past the cap
        (1025, 0.0, 300.0),  # nor where 2.0 ** 1024 overflows a float
        (10**6, 0.0, 300.0),
        (1, 1.0, 0.8),  # full jitter takes 20% off
        (3, 0.5, 3.6),  # half jitter takes 10% off
    ],
)
def test_compute_backoff(attempts: int, rand: float, expected: float) -> None:
    """Exponential, capped, with jitter only ever shortening the wait."""
    assert compute_backoff(attempts, BackoffPolicy(), FixedRandom(rand)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("error", "attempts", "max_attempts", "kind", "delay"),
    [
        (TransientError("x"), 1, 3, "retry", 1.0),  # transient: retry after backoff
        (ValueError("x"), 2, 3, "retry", 2.0),  # any other exception is transient
        (TransientError("x"), 3, 3, "fail", None),  # attempts exhausted
        (PermanentError("x"), 1, 3, "fail", None),  # permanent: fail at once
        (RateLimited(30), 3, 3, "pause", 30.0),  # rate limit: pause, even on the last attempt
        (RateLimited(99999), 1, 3, "pause", 3600.0),  # retry_after capped
        (RateLimited(0.5), 1, 3, "pause", 1.0),  # never less than min_pause
        (RateLimited(-5), 1, 3, "pause", 1.0),  # a negative retry_after: the minimum pause
        (RateLimited(0), 1, 3, "pause", 1.0),
        (RateLimited(float("nan")), 1, 3, "pause", 1.0),  # not a number: the minimum too
        (RateLimited(float("inf")), 1, 3, "pause", 3600.0),  # infinite: as long as allowed
        (RateLimited(float("-inf")), 1, 3, "pause", 1.0),  # negative: the minimum
        (_NoInit(), 3, 3, "pause", 1.0),  # a subclass that skipped __init__: no retry_after at all
        (_Unreadable(), 1, 3, "pause", 1.0),  # a retry_after that raises when read
        (_Worded(), 1, 3, "pause", 1.0),  # one that is no number
        (_Huge(), 1, 3, "pause", 3600.0),  # an int too large for a float: as long as allowed
        (_SuspendedNoInit(), 1, 3, "pause", 1.0),  # suspended, with neither reason nor duration
        (AccountSuspended("flood", float("nan")), 1, 3, "pause", 1.0),
        (KeyboardInterrupt(), 1, 3, "retry", 1.0),  # BaseException from a sender is transient too
        (AccountSuspended("peer flood", 600), 1, 3, "pause", 600.0),  # the account waits
        (AccountSuspended("banned"), 3, 3, "disable", None),  # until a user lifts it, whatever the attempt
    ],
)
def test_decide(error: BaseException, attempts: int, max_attempts: int, kind: str,
                delay: float | None) -> None:
    """Each sender outcome maps to retry, fail or pause at the right time."""
    decision = decide(error, attempts, max_attempts, NOW, BackoffPolicy(), FixedRandom(0.0))
    assert decision.next.value == kind
    expected_at = None if delay is None else NOW + timedelta(seconds=delay)
    assert decision.at == expected_at


@pytest.mark.parametrize(
    ("retry_after", "in_a_row", "pause"),
    [
        (0.0, 1, 1.0),  # the first "retry after 0": the minimum
        (0.0, 2, 2.0),  # asked again at once: doubled
        (0.0, 4, 8.0),
        (0.0, 13, 3600.0),  # up to max_retry_after
        (0.0, 10**6, 3600.0),  # never an overflow
        (30.0, 3, 30.0),  # a real retry_after above the floor is honoured as it is
        (3.0, 3, 4.0),  # below the floor of a third limit in a row: the floor
    ],
)
def test_pause_grows_while_the_platform_keeps_rate_limiting(retry_after: float, in_a_row: int,
                                                            pause: float) -> None:
    """A platform that keeps answering "retry after 0" gets a pause doubling from min_pause."""
    assert pause_for(retry_after, in_a_row, BackoffPolicy()) == pause


@pytest.mark.parametrize("field", ["base", "factor", "max_delay", "max_retry_after", "min_pause"])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_a_backoff_policy_refuses_values_it_cannot_compute_with(field: str, value: float) -> None:
    """Zero, negative, NaN and infinite durations are refused when the policy is made."""
    with pytest.raises(ValidationError, match=field):
        BackoffPolicy(**{field: value})
