"""Retry policy as pure functions: given an attempt's failure, what happens next."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from actors.errors import AccountSuspended, PermanentError, RateLimited
from postroom_common import ValidationError
from postroom_common.checks import check_number, check_seconds, later


class RandomSource(Protocol):
    """The part of `random.Random` the policy uses; injected so tests are exact."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff with jitter, capped."""

    base: float = 1.0
    """Seconds before the first retry."""
    factor: float = 2.0
    """Growth per attempt."""
    max_delay: float = 300.0
    """No retry waits longer than this."""
    jitter: float = 0.2
    """Up to this fraction is taken off at random, so retries of a burst spread out."""
    max_retry_after: float = 3600.0
    """A rate limit's retry_after is capped at this many seconds (an infinite one means this)."""
    min_pause: float = 1.0
    """The shortest pause a rate limit imposes: a retry_after of 0, negative, NaN, missing or
    unreadable means this, and it doubles while the platform keeps rate-limiting the account."""

    def __post_init__(self) -> None:
        for name in ("base", "max_delay", "max_retry_after", "min_pause"):
            check_seconds(f"BackoffPolicy.{name}", getattr(self, name), positive=True)
        check_number("BackoffPolicy.factor", self.factor, positive=True)
        jitter = self.jitter
        if not (isinstance(jitter, int | float) and not isinstance(jitter, bool) and 0.0 <= jitter < 1.0):
            raise ValidationError(f"BackoffPolicy.jitter must be in [0, 1), not {jitter!r}")


def compute_backoff(attempts: int, policy: BackoffPolicy, rng: RandomSource) -> float:
    """Seconds to wait after `attempts` failed attempts (1 = the first failure)."""
    capped = min(policy.max_delay, _grown(policy.base, policy.factor, attempts - 1))
    return capped * (1.0 - policy.jitter * rng.random())


def pause_for(retry_after: float | None, in_a_row: int, policy: BackoffPolicy) -> float:
    """Seconds an account pauses for its `in_a_row`-th rate limit without a send between:
    what the platform asked, but never less than `min_pause` doubled for each one before
    (a platform answering "retry after 0" again and again is not hammered), nor more than
    `max_retry_after` (what an infinite retry_after means)."""
    asked = retry_after if retry_after is not None and not math.isnan(retry_after) else 0.0
    floor = _grown(policy.min_pause, 2.0, in_a_row - 1)
    return min(max(asked, floor), policy.max_retry_after)


def _grown(start: float, factor: float, steps: int) -> float:
    """`start * factor ** steps`, infinite rather than an OverflowError far past any cap."""
    try:
        return start * factor ** max(0, steps)
    except OverflowError:
        return math.inf


class Next(enum.Enum):
    """What follows a failed attempt."""

    RETRY = "retry"  # the message again, after its backoff
    FAIL = "fail"  # the message ends failed (permanent error, or its last attempt)
    PAUSE = "pause"  # the whole account waits (rate limited, suspended for a while); attempt given back
    DISABLE = "disable"  # the account sends nothing until a user lifts it; attempt given back


@dataclass(frozen=True, slots=True)
class Decision:
    """What to write after a failed attempt."""

    next: Next
    """What follows it."""
    at: datetime | None = None
    """When the message (or, after PAUSE, the whole account) may be tried again."""


def decide(
    error: BaseException, attempts: int, max_attempts: int, now: datetime,
    policy: BackoffPolicy, rng: RandomSource, limited_in_a_row: int = 1,
) -> Decision:
    """Classify a sender's exception into retry, fail or pause (`limited_in_a_row`: the
    account's rate limits without a send between, this one included)."""
    if isinstance(error, RateLimited | AccountSuspended):
        retry_after = retry_after_of(error)
        if retry_after is None and isinstance(error, AccountSuspended):
            # Banned, or the session revoked: waiting cannot help, only a person can.
            return Decision(Next.DISABLE)
        # Not the message's fault: the whole account waits and the attempt is given back.
        return Decision(Next.PAUSE, later(now, pause_for(retry_after, limited_in_a_row, policy)))
    if isinstance(error, PermanentError) or attempts >= max_attempts:
        return Decision(Next.FAIL)
    return Decision(Next.RETRY, later(now, compute_backoff(attempts, policy, rng)))


def retry_after_of(error: RateLimited | AccountSuspended) -> float | None:
    """The seconds the sender's exception asks for, as a float (None: it says "until lifted").

    A subclass may skip `__init__` or make `retry_after` a property that raises or a value
    that is no number: that counts as 0, the minimum pause, and an int too large for a
    float as infinite, never as a crash of the account reading it.
    """
    try:
        value = error.retry_after
    except BaseException:  # noqa: BLE001 - the sender's code, run on postroom's thread
        return 0.0
    if value is None:
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf
    except BaseException:  # noqa: BLE001 - the same: a __float__ of the sender's
        return 0.0
