"""The supervisor's watches: which pauses were lifted elsewhere, and which drains to answer."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from actors.watches import DISABLED_REPORT_EVERY, DrainWaiters, PauseWatch
from postroom_common import AccountPause

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(minutes=10)


def pause(phone: str, until: datetime | None = None) -> AccountPause:
    return AccountPause(phone, until, "AccountSuspended")


def test_a_pause_gone_from_a_read_was_lifted() -> None:
    """Believed paused (noted, or seen by a read), then absent from a later read: lifted."""
    watch = PauseWatch()
    watch.noted("+a", None)
    assert watch.read([pause("+b", LATER)], watch.asking(), NOW) == ["+a"]
    assert watch.read([], watch.asking(), NOW) == ["+b"]  # +b's ten minutes had not run out
    assert watch.read([], watch.asking(), NOW) == []  # each is lifted once


def test_a_pause_that_ran_out_was_not_lifted() -> None:
    """A timed pause missing from a read made after its end simply ended: nothing to do."""
    watch = PauseWatch()
    watch.noted("+a", LATER)
    assert watch.read([], watch.asking(), LATER + timedelta(seconds=1)) == []


def test_a_note_after_the_read_was_asked_outweighs_it() -> None:
    """A pause recorded after the read was asked for may be missing from it: not lifted."""
    watch = PauseWatch()
    asked = watch.asking()
    watch.noted("+a", None)
    assert watch.read([], asked, NOW) == []
    assert watch.read([], watch.asking(), NOW) == ["+a"]


def test_disabled_accounts_are_reported_once_per_period() -> None:
    """Reported at once, then not before DISABLED_REPORT_EVERY seconds; the clock resets when
    none is left."""
    watch = PauseWatch()
    disabled = [pause("+b"), pause("+a"), pause("+c", LATER)]
    assert watch.disabled_to_report(disabled, 0.0) == ["+a", "+b"]
    assert watch.disabled_to_report(disabled, DISABLED_REPORT_EVERY - 1) == []
    assert watch.disabled_to_report(disabled, DISABLED_REPORT_EVERY) == ["+a", "+b"]
    assert watch.disabled_to_report([], DISABLED_REPORT_EVERY + 1) == []
    assert watch.disabled_to_report(disabled, DISABLED_REPORT_EVERY + 2) == ["+a", "+b"]


def test_disabled_accounts_are_those_believed_disabled_until_lifted() -> None:
    """Noted or read without an end: disabled; a timed pause is not; a later read without it
    clears it."""
    watch = PauseWatch()
    watch.noted("+b", None)
    watch.noted("+t", LATER)
    watch.read([pause("+a"), pause("+b"), pause("+t", LATER)], watch.asking(), NOW)
    assert watch.disabled() == ["+a", "+b"]
    watch.read([pause("+b")], watch.asking(), NOW)
    assert watch.disabled() == ["+b"]


def test_a_pause_lifted_here_outweighs_a_read_asked_before() -> None:
    """A pause this process lifted is gone at once, even if a read asked before the lift still
    shows it; a read asked after it shows a new pause, and so does a note."""
    watch = PauseWatch()
    watch.noted("+a", None)
    asked = watch.asking()
    watch.lifted_here("+a")
    assert watch.disabled() == []
    assert watch.read([pause("+a")], asked, NOW) == [] and watch.disabled() == []
    watch.read([pause("+a")], watch.asking(), NOW)  # disabled again since
    assert watch.disabled() == ["+a"]
    watch.lifted_here("+a")
    watch.noted("+a", None)  # and again, noted after the lift
    assert watch.disabled() == ["+a"]


def held(name: str) -> Callable[[], str]:
    """A reply its caller still holds."""
    return lambda: name


def test_drains_are_answered_when_empty_or_past_their_deadline() -> None:
    """A count of 0 answers every waiter past its barrier; otherwise only those whose deadline
    has passed."""
    waiters = DrainWaiters()
    for name, deadline in (("forever", None), ("short", 1.0), ("long", 5.0)):
        assert waiters.passed(waiters.add(held(name), deadline), 0)
    assert waiters.next_deadline() == 1.0
    assert waiters.counted(3, 1, 0.5) == []
    assert waiters.counted(3, 2, 1.0) == ["short"]
    assert waiters.next_deadline() == 5.0
    assert waiters.counted(0, 3, 2.0) == ["forever", "long"]
    assert not waiters


def test_a_drain_is_answered_only_by_a_count_begun_after_its_barrier() -> None:
    """Before its write barrier came back, and by a count already running when it did, a
    drain's enqueues may not be counted yet: their zero does not answer it."""
    waiters = DrainWaiters()
    early = waiters.add(held("early"), None)
    late = waiters.add(held("late"), None)
    assert waiters.passed(early, 0)
    assert waiters.counted(0, 1, 0.0) == ["early"]  # "late" has no barrier back yet
    assert waiters.passed(late, 1)  # count 1 was running when it came back
    assert waiters.counted(0, 1, 0.0) == []
    assert waiters.counted(0, 2, 0.0) == ["late"]


class Future:
    """Stands for a caller's future: held weakly, as the supervisor holds a ThreadFuture."""


def test_a_drain_whose_caller_let_go_is_forgotten() -> None:
    """A drain whose reply nobody holds any more is dropped by the next prune or count, without
    an answer; those still held wait on, and a barrier or removal of a dropped one is a no-op."""
    waiters = DrainWaiters()
    kept = Future()
    given_up = [Future() for _ in range(1000)]
    keys = [waiters.add(weakref.ref(future), None) for future in given_up]
    waiters.add(weakref.ref(kept), None)
    assert len(waiters) == 1001
    del given_up
    assert waiters.prune() and len(waiters) == 1
    assert not waiters.passed(keys[0], 0) and waiters.remove(keys[1]) is None
    del kept
    assert waiters.counted(0, 1, 0.0) == [] and not waiters


def test_a_stop_answers_only_the_drains_still_held() -> None:
    """`take_all` (a stop, a failed count) gives the replies still held, not the forgotten ones."""
    waiters = DrainWaiters()
    gone, stays = Future(), Future()
    waiters.add(weakref.ref(gone), 1.0)
    waiters.add(weakref.ref(stays), 1.0)
    del gone
    assert waiters.take_all() == [stays]
