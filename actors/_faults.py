"""Crash points and fault points, for the tests of what survives a failure.

Crash points, for the crash-test matrix: the process SIGKILLs itself at a named place.

Test-only: nothing happens unless POSTROOM_CRASH_AT is set, e.g.
`POSTROOM_CRASH_AT=claim.committed` (first time there) or `send.after:3` (third
time). Modelled on SQLite's own crash tests: a real kill at a known instant,
then the next start must find a consistent database.

Points: enqueue.committed (rows committed, callers not yet answered),
claim.committed (PROCESSING committed, sender not yet called), send.inside and
send.after (called by test senders), record.completed (COMPLETED committed),
record.retry.mid (inside the transaction writing a retry), recover.mid (inside
the boot recovery transaction), boot.recovered (recovery committed, accounts not
yet started).
"""

from __future__ import annotations

import os
import signal
import threading

_lock = threading.Lock()
_hits: dict[str, int] = {}


def _parse(spec: str) -> dict[str, int]:
    points = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        points[name] = int(count or 1)
    return points


_ARMED = _parse(os.environ.get("POSTROOM_CRASH_AT", ""))


def crash_point(name: str) -> None:
    """SIGKILL this process if `name` is armed and reached its count; otherwise nothing."""
    if name not in _ARMED:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] >= _ARMED[name]:
            os.kill(os.getpid(), signal.SIGKILL)


# -- fault points: an exception inside postroom's own code, armed by a test in-process --------

_faults: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """A failure a test planted in postroom's own code (`arm_fault`)."""


def arm_fault(name: str, times: int = 1) -> None:
    """Make the next `times` passes through `fault_point(name)` raise InjectedFault (tests only)."""
    with _lock:
        _faults[name] = times


def disarm_faults() -> None:
    """Forget every armed fault point."""
    with _lock:
        _faults.clear()


def faults_armed() -> bool:
    """Some fault point is armed: a hot path asks first, before it names its point."""
    return bool(_faults)


def fault_point(name: str) -> None:
    """Raise InjectedFault if a test armed `name`; otherwise nothing (one dict look-up)."""
    if not _faults or name not in _faults:
        return
    with _lock:
        left = _faults.get(name, 0)
        if left <= 0:
            return
        _faults[name] = left - 1
    raise InjectedFault(f"fault injected at {name}")
