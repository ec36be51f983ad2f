"""A real process killed with SIGKILL mid-run, restarted until done: nothing acknowledged is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.crash_harness import Harness


@pytest.mark.timeout(300)
def test_sigkill_mid_run_loses_nothing(tmp_path: Path) -> None:
    """Kill the queue process at random moments; every acked message ends final, dups bounded."""
    harness = Harness(tmp_path, messages=1500, accounts=20, seed=7, failure_rate=0.05)
    for _ in range(5):
        harness.kill_cycle(0.4, 1.5)
    harness.finish()
    verdict = harness.verdict()
    run = harness.run
    assert run.drained, "the final clean run did not drain the queue"
    assert sorted(run.acked) == list(range(1500)), "every planned message was acknowledged"
    assert verdict.lost == [], verdict
    assert verdict.unexpected == []
    assert verdict.not_final == []
    assert verdict.order_violations == []
    assert verdict.duplicates <= run.in_flight_at_kills
    assert verdict.duplicated_ids <= run.sent_unrecorded  # resent only if sent and unrecorded
    assert set(run.integrity) <= {"ok"}
    assert verdict.statuses.get("completed", 0) + verdict.statuses.get("failed", 0) == 1500


@pytest.mark.timeout(300)
def test_sigkill_at_most_once_never_resends(tmp_path: Path) -> None:
    """With at-most-once delivery, messages in flight at a kill end failed and are never sent twice."""
    harness = Harness(tmp_path, messages=600, accounts=10, seed=11, failure_rate=0.0,
                      delivery="at_most_once")
    for _ in range(3):
        harness.kill_cycle(0.4, 1.2)
    harness.finish()
    verdict = harness.verdict()
    assert harness.run.drained
    assert verdict.lost == [] and verdict.unexpected == [] and verdict.not_final == [], verdict
    assert verdict.duplicates == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_loop_at_scale(tmp_path: Path) -> None:
    """10,000 messages over 100 accounts, 30 random SIGKILLs, then a clean run: the full oracle holds."""
    harness = Harness(tmp_path, messages=10_000, accounts=100, seed=2026, failure_rate=0.05,
                      latency_ms=(1, 20))
    for _ in range(30):
        harness.kill_cycle(0.2, 3.0)
    harness.finish(timeout=600)
    verdict = harness.verdict()
    run = harness.run
    assert run.drained
    assert sorted(run.acked) == list(range(10_000))
    assert verdict.lost == [] and verdict.unexpected == [] and verdict.not_final == [], verdict
    assert verdict.order_violations == []
    assert verdict.duplicated_ids <= run.sent_unrecorded
    assert verdict.duplicates <= run.in_flight_at_kills
    assert set(run.integrity) == {"ok"} and len(run.integrity) >= 25
