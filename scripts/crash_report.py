"""One run of the full-size SIGKILL loop (as in test_sigkill_loop_at_scale), printing its figures.

    .venv/bin/python scripts/crash_report.py

The README's SIGKILL figures come from this script.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tests.integration.crash_harness import Harness


def main() -> None:
    started = time.time()
    harness = Harness(pathlib.Path(tempfile.mkdtemp()), messages=10_000, accounts=100,
                      seed=2026, failure_rate=0.05, latency_ms=(1, 20))
    for _ in range(30):
        harness.kill_cycle(0.2, 3.0)
    harness.finish(timeout=600)
    verdict, run = harness.verdict(), harness.run
    print({
        "kills": run.kills, "acked": len(run.acked), "lost": len(verdict.lost),
        "unexpected": len(verdict.unexpected), "not_final": len(verdict.not_final),
        "duplicates": verdict.duplicates, "in_flight_at_kills": run.in_flight_at_kills,
        "sent_unrecorded": len(run.sent_unrecorded),
        "order_violations": len(verdict.order_violations), "integrity": set(run.integrity),
        "statuses": verdict.statuses, "seconds": round(time.time() - started),
    })


if __name__ == "__main__":
    main()
