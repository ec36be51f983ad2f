"""Pacing: how fast one account may send, overall and to one recipient.

A guard the user sets from the platform's published limits (Telegram: ~30 messages/s
per bot, 1 per second per chat, 20 per minute per group). The server's retry_after
always wins over it; pacing only keeps the account from earning one.
"""

from __future__ import annotations

from dataclasses import dataclass

from postroom_common.checks import check_count, check_number, check_seconds


@dataclass(frozen=True, slots=True)
class Pacing:
    """Limits for one account; None means no limit."""

    rate: float | None = None
    """Messages per second for the whole account (a token bucket)."""
    burst: int = 1
    """Messages that may go back to back before `rate` applies."""
    per_recipient_interval: float | None = None
    """Minimum seconds between two messages to the same recipient (user_id)."""

    def __post_init__(self) -> None:
        check_number("Pacing.rate", self.rate, positive=True, optional=True)
        check_count("Pacing.burst", self.burst, minimum=1)
        check_seconds("Pacing.per_recipient_interval", self.per_recipient_interval, optional=True)


class Pacer:
    """The state of one account's pacing, on the monotonic clock."""

    def __init__(self, pacing: Pacing, now: float) -> None:
        self.pacing = pacing
        self._tokens = float(pacing.burst)
        self._refilled = now
        self._last_to: dict[str, float] = {}

    def token_wait(self, now: float) -> float:
        """Seconds until the account may send at all (0: now)."""
        rate = self.pacing.rate
        if rate is None:
            return 0.0
        self._tokens = min(float(self.pacing.burst), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / rate

    def recipient_wait(self, user_id: str, now: float) -> float:
        """Seconds until `user_id` may get the next message (0: now)."""
        interval = self.pacing.per_recipient_interval
        last = self._last_to.get(user_id)
        if interval is None or last is None:
            return 0.0
        return max(0.0, last + interval - now)

    def sent(self, user_id: str, now: float) -> None:
        """Count one attempt (a failed attempt still reached the platform)."""
        if self.pacing.rate is not None:
            self.token_wait(now)
            self._tokens -= 1.0
        if self.pacing.per_recipient_interval is not None:
            self._last_to[user_id] = now
            self._forget_old(now)

    def _forget_old(self, now: float) -> None:
        # Bounded memory: a recipient whose interval has passed needs no entry.
        interval = self.pacing.per_recipient_interval or 0.0
        if len(self._last_to) > 1024:
            self._last_to = {u: t for u, t in self._last_to.items() if now - t < interval}
