"""FeedCursor: the place in the change feed, with the gaps below it that may still fill."""

from __future__ import annotations

from storage.feed import GAP_TTL, INITIAL_GAPS, MAX_GAPS, FeedCursor


def test_an_empty_feed_starts_with_no_gap() -> None:
    """A feed with nothing in it: nothing to ask for again."""
    cursor = FeedCursor(0, [], now=0.0)
    assert (cursor.high, cursor.gaps) == (0, [])


def test_seqs_absent_below_the_end_at_start_are_gaps() -> None:
    """At start, the seqs below the end that were not visible (transactions in progress) are
    asked for again; older ones are not."""
    cursor = FeedCursor(1000, [1000, 998], now=0.0)
    assert cursor.gaps == [s for s in range(1000 - INITIAL_GAPS + 1, 1000) if s != 998]


def test_a_later_seq_read_before_an_earlier_one_leaves_a_gap_until_it_fills() -> None:
    """Seq 3 committed before seq 2 (PostgreSQL): 2 is a gap, read when it shows, once."""
    cursor = FeedCursor(1, [1], now=0.0)
    assert cursor.read([3], now=1.0) == [3]
    assert (cursor.high, cursor.gaps) == (3, [2])
    assert cursor.read([2, 3], now=2.0) == [2]  # 3 again is not new
    assert cursor.gaps == [] and cursor.read([2, 3], now=3.0) == []


def test_a_gap_that_never_fills_is_dropped_after_its_time() -> None:
    """A rolled-back transaction's seq is forgotten after GAP_TTL."""
    cursor = FeedCursor(0, [], now=0.0)
    cursor.read([2], now=0.0)
    assert cursor.gaps == [1]
    cursor.read([], now=GAP_TTL + 0.1)
    assert cursor.gaps == []


def test_gaps_are_bounded() -> None:
    """A burst of rollbacks keeps at most MAX_GAPS gaps, the newest."""
    cursor = FeedCursor(0, [], now=0.0)
    cursor.read([MAX_GAPS * 3], now=0.0)
    assert len(cursor.gaps) == MAX_GAPS and cursor.gaps[-1] == MAX_GAPS * 3 - 1
