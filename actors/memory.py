"""Giving back to the system the memory that bursts of accounts leave free.

glibc gives each thread that allocates a malloc arena of its own, and an arena keeps the
pages it grew to: after 20,000 accounts start, send and idle out, the runtime's threads'
arenas hold hundreds of MiB that Python has freed (bench (e)'s rounds). `malloc_trim(0)`
returns those free pages to the system, in every arena; it changes no setting of the host's
allocator. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable

__all__ = ["IdleTrim", "release_free_memory"]


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()
_TRIMMING = threading.Lock()  # one trim at a time: each walks every arena under its lock


def release_free_memory() -> bool:
    """Return the pages the allocator holds free to the system; False where that cannot be done."""
    if _TRIM is None:
        return False
    with _TRIMMING:
        _TRIM(0)
    return True


class IdleTrim:
    """When to trim: after `every` accounts have idled out since the last trim, at most once per
    `interval` seconds (monotonic time passed in)."""

    def __init__(self, every: int, interval: float) -> None:
        self.every, self.interval = every, interval
        self._retired = 0
        self._last: float | None = None

    def retired(self, now: float) -> bool:
        """An account idled out at `now`; True when a trim is due."""
        self._retired += 1
        if self._retired < self.every or (self._last is not None and now - self._last < self.interval):
            return False
        self._retired, self._last = 0, now
        return True
