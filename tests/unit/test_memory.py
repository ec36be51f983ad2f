"""Giving back the memory bursts of accounts leave free: when, and that it works here."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from actors.memory import IdleTrim, release_free_memory


def test_a_trim_is_due_after_enough_accounts_idled_out_and_not_more_often_than_the_interval() -> None:
    """Every `every` retirements a trim falls due, but never twice within `interval` seconds."""
    trim = IdleTrim(every=3, interval=10.0)
    assert [trim.retired(0.0) for _ in range(3)] == [False, False, True]
    assert [trim.retired(1.0) for _ in range(3)] == [False, False, False]  # within the interval
    assert trim.retired(11.0) is True  # the count went on: due as soon as the interval is over
    assert [trim.retired(12.0) for _ in range(3)] == [False, False, False]


@pytest.mark.skipif(platform.system() != "Linux" or "musl" in (ctypes.util.find_library("c") or ""),
                    reason="malloc_trim is glibc's")
def test_free_memory_is_given_back_on_glibc() -> None:
    """On glibc the trim runs (malloc_trim is found and called)."""
    assert release_free_memory() is True
