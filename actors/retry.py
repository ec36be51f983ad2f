"""Retry policy as pure functions: given an attempt's failure, what happens next."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from actors.errors import AccountSuspended, PermanentError, RateLimited


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
    """A rate limit's retry_after is capped at this many seconds."""


def compute_backoff(attempts: int, policy: BackoffPolicy, rng: RandomSource) -> float:
    """Seconds to wait after `attempts` failed attempts (1 = the first failure)."""
    raw = policy.base * policy.factor ** max(0, attempts - 1)
    capped = min(policy.max_delay, raw)
    return capped * (1.0 - policy.jitter * rng.random())


@dataclass(frozen=True, slots=True)
class Decision:
    """What to write after a failed attempt."""

    kind: str
    """"retry", "fail", "pause" (rate limited or suspended for a while: the attempt is given
    back), or "disable" (suspended until a user lifts it: the attempt is given back)."""
    at: datetime | None = None
    """When the message (or, for "pause", the whole account) may be tried again."""


def decide(
    error: BaseException, attempts: int, max_attempts: int, now: datetime,
    policy: BackoffPolicy, rng: RandomSource,
) -> Decision:
    """Classify a sender's exception into retry, fail or pause."""
    if isinstance(error, AccountSuspended) and error.retry_after is None:
        # Banned, or the session revoked: waiting cannot help, only a person can.
        return Decision("disable")
    if isinstance(error, RateLimited | AccountSuspended):
        # Not the message's fault: the whole account waits and the attempt is given back.
        assert error.retry_after is not None
        pause = min(max(0.0, error.retry_after), policy.max_retry_after)
        return Decision("pause", now + timedelta(seconds=pause))
    if isinstance(error, PermanentError) or attempts >= max_attempts:
        return Decision("fail")
    return Decision("retry", now + timedelta(seconds=compute_backoff(attempts, policy, rng)))
