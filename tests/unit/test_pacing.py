"""Pacing: a token bucket per account and a minimum interval per recipient."""

from __future__ import annotations

import pytest

from actors.pacing import Pacer, Pacing


@pytest.mark.parametrize(
    ("pacing", "sends_at", "expected_wait_after"),
    [
        (Pacing(), [0.0, 0.0, 0.0], 0.0),  # no limit: never waits
        (Pacing(rate=2.0), [0.0], 0.5),  # 2/s: the next token in half a second
        (Pacing(rate=2.0), [0.0, 0.5], 0.5),  # refilled at 0.5 s, spent again
        (Pacing(rate=1.0, burst=3), [0.0, 0.0], 0.0),  # a burst of 3: one token left
        (Pacing(rate=1.0, burst=3), [0.0, 0.0, 0.0], 1.0),  # burst spent: wait for a token
    ],
)
def test_token_bucket(pacing: Pacing, sends_at: list[float], expected_wait_after: float) -> None:
    """The account waits exactly until its next token."""
    pacer = Pacer(pacing, now=0.0)
    for at in sends_at:
        assert pacer.token_wait(at) == 0.0
        pacer.sent("u", at)
    assert pacer.token_wait(sends_at[-1]) == pytest.approx(expected_wait_after)


def test_per_recipient_interval() -> None:
    """One recipient waits its interval; another recipient does not."""
    pacer = Pacer(Pacing(per_recipient_interval=1.0), now=0.0)
    pacer.sent("chat-1", 10.0)
    assert pacer.recipient_wait("chat-1", 10.4) == pytest.approx(0.6)
    assert pacer.recipient_wait("chat-2", 10.4) == 0.0
    assert pacer.recipient_wait("chat-1", 11.0) == 0.0


def test_recipient_memory_is_bounded() -> None:
    """Old recipients are forgotten once their interval has passed."""
    pacer = Pacer(Pacing(per_recipient_interval=1.0), now=0.0)
    for i in range(5000):
        pacer.sent(f"user-{i}", float(i))
    assert len(pacer._last_to) <= 1025
