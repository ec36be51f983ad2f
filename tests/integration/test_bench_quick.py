"""The benchmark's quick run, so that it never rots (its figures are never judged here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import HEADERS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_benchmark_runs_every_scenario_and_prints_the_table(tmp_path: Path) -> None:
    """`python -m bench --quick` exits 0 and prints the table with every column header and scenario."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(tmp_path / "bench.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for header in HEADERS:
        assert header in done.stdout
    for figure in ("one tell(Enqueue) per message", "EnqueueBatch of", "async def sender",
                   "single enqueues", "latency p99", "boot to first send", "RSS,", "fsyncs per message",
                   "longest pause between two sends during cleanup", "account actors started at boot"):
        # (a) in each of its three ways, then one of each scenario (b) to (h)
        assert figure in done.stdout
    assert (tmp_path / "bench.json").exists()
