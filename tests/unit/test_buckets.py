"""Buckets and their placement: stable across processes, spread over the live nodes, and a node
that joins or leaves moves only its own share."""

from __future__ import annotations

import zlib
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from actors.holdings import Holdings
from postroom_common.buckets import BUCKETS, bucket_of, moves, placement

nodes_sets = st.sets(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=8)


def test_an_accounts_bucket_is_the_crc_of_its_name_the_same_in_every_process() -> None:
    assert bucket_of("+15550001") == zlib.crc32(b"+15550001") % BUCKETS
    assert all(0 <= bucket_of(f"+1555{n:07d}") < BUCKETS for n in range(1000))
    assert len({bucket_of(f"+1555{n:07d}") for n in range(1000)}) == BUCKETS  # every bucket used
    assert 0 <= bucket_of("\ud800 lone surrogate") < BUCKETS  # any str, even one UTF-8 refuses


@given(nodes_sets)
def test_every_bucket_is_placed_on_a_live_node(nodes: set[int]) -> None:
    placed = placement(nodes)
    assert set(placed) == set(range(BUCKETS)) and set(placed.values()) <= nodes


def test_no_live_node_places_nothing() -> None:
    assert placement([]) == {}


@given(nodes_sets, st.integers(min_value=1, max_value=10**6))
def test_a_joining_node_takes_buckets_only_from_others_and_a_leaving_one_moves_only_its_own(
        nodes: set[int], newcomer: int) -> None:
    before = placement(nodes)
    after = placement(nodes | {newcomer})
    moved = [b for b in range(BUCKETS) if before[b] != after[b]]
    assert all(after[b] == newcomer for b in moved)
    if newcomer not in nodes:  # and back: the buckets it won go back where they were
        assert placement(nodes) == before


def test_the_buckets_spread_over_the_nodes() -> None:
    counts = Counter(placement(range(1, 5)).values())
    assert len(counts) == 4 and min(counts.values()) >= BUCKETS // 4 // 3


def test_moves_take_every_free_bucket_placed_here_and_hand_over_a_few_at_a_time() -> None:
    wanted = {b: 1 if b < 32 else 2 for b in range(BUCKETS)}
    owners: dict[int, int | None] = {b: 1 for b in range(BUCKETS)}  # node 1 holds all
    assert moves(owners, wanted, node=1, most=8) == ([], list(range(32, 40)))
    assert moves(owners, wanted, node=2, most=8) == ([], [])  # held by a live node: not taken
    owners = {b: (None if b >= 32 else 1) for b in range(BUCKETS)}  # node 1 let those go
    assert moves(owners, wanted, node=2, most=8) == (list(range(32, 64)), [])  # all at once
    assert moves(owners, wanted, node=1, most=8) == ([], [])  # free, but placed on node 2


def test_holdings_let_nothing_be_claimed_past_the_deadline() -> None:
    holdings = Holdings()
    holdings.won({3: 7, 5: 2})
    assert holdings.epochs(0.0) == {3: 7, 5: 2}  # no lease: no deadline
    holdings.renewed(until=10.0)
    assert holdings.epochs(9.9) == {3: 7, 5: 2} and holdings.epochs(10.0) == {}
    assert holdings.epochs(9.0).get(3) == 7 and 3 not in holdings.epochs(11.0)
    holdings.given_up([3])
    assert holdings.held() == {5}
    assert holdings.lost() == {5} and holdings.held() == set()
