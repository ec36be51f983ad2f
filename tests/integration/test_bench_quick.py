"""The benchmark's quick run and its comparison of two revisions, so that neither rots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import HEADERS
from tests.conftest import postgres_reason

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
    # Names are read from the JSON: the table wraps long ones over lines.
    names = [f["name"] for f in json.loads((tmp_path / "bench.json").read_text())["figures"]]
    for figure in ("one tell(Enqueue) per message", "EnqueueBatch of", "async def sender",
                   "single enqueues", "latency p99", "boot to first send", "RSS,", "fsyncs per message",
                   "longest pause between two sends during cleanup", "account actors started at boot",
                   "rounds of", "encryption's cost per message", "metrics' cost per message"):
        # (a) in each of its three ways, then one of each scenario (b) to (k)
        assert any(figure in name for name in names), figure
    if postgres_reason() is None:  # (l) runs on PostgreSQL only
        assert any("two nodes / one node" in name for name in names)


def _git_head() -> str | None:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() if done.returncode == 0 else None


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_compare_runs_both_revisions_and_removes_its_worktrees(tmp_path: Path) -> None:
    """`python -m bench.compare HEAD HEAD --quick` compares a figure of both sides and leaves no worktree."""
    if _git_head() is None:
        pytest.skip("not a git checkout")
    out = tmp_path / "compare.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.compare", "HEAD", "HEAD", "--rounds", "1", "--scenarios", "h",
         "--json", str(out), "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=100,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert any(r["scenario"] == "h" and r["a"] is not None and r["b"] is not None for r in rows)
    listed = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True,
                            check=True).stdout
    assert "postroom-compare-" not in listed
