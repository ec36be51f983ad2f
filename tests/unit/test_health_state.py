"""HealthState: what the writer tells the supervisor's GetHealth."""

from __future__ import annotations

from actors.persistence import HealthState
from postroom_common import StorageError


def test_health_is_degraded_while_a_commit_waits_too_long() -> None:
    """A commit under way longer than the threshold degrades health, naming the wait (and the
    error before it); its end, success or failure, ends the wait."""
    health = HealthState()
    health.committing(100.0)
    assert health.snapshot(101.0, stalled_after=5.0) == (False, None)
    assert health.snapshot(106.0, stalled_after=5.0) == (True, "a commit has waited 6 s for the database")
    health.failed(StorageError("locked"))
    health.committing(200.0)
    assert health.snapshot(210.0, stalled_after=5.0) == (
        True, "a commit has waited 10 s for the database; before it: locked")
    health.ok()
    assert health.snapshot(300.0, stalled_after=5.0) == (False, None)
