"""Buckets: how the accounts of a database are shared among the nodes that send for it.

Every account falls in one of `BUCKETS` buckets (`bucket_of`, a CRC of its name: the same in
every process and every version). A node owns whole buckets, never single accounts, so that
the table of owners stays small whatever the number of accounts. Which live node should own a
bucket is decided by rendezvous hashing (`placement`): each node scores each bucket, the
highest score wins, and a node that joins or leaves moves only the buckets it wins or held,
about 1/n of them, with no coordination beyond the list of live nodes.

Pure: no clock, no database. `storage` records who owns what; the node's lease keeper decides.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Mapping

__all__ = ["BUCKETS", "bucket_of", "moves", "placement", "score"]

#: Buckets per database. Fixed: a change would move accounts between buckets while nodes run.
BUCKETS = 64


def bucket_of(phone: str) -> int:
    """The bucket of an account."""
    return zlib.crc32(phone.encode("utf-8", "surrogatepass")) % BUCKETS


def score(node: int, bucket: int) -> int:
    """Node `node`'s rendezvous score for `bucket` (the highest live one owns it)."""
    digest = hashlib.blake2b(f"{node}:{bucket}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def placement(nodes: Iterable[int]) -> dict[int, int]:
    """{bucket: the node that should own it} among `nodes` (empty when there is none)."""
    live = sorted(set(nodes))
    if not live:
        return {}
    return {bucket: max(live, key=lambda node: (score(node, bucket), node)) for bucket in range(BUCKETS)}


def moves(owners: Mapping[int, int | None], wanted: Mapping[int, int], node: int,
          most: int) -> tuple[list[int], list[int]]:
    """What `node` should do now: (to take, to hand over, at most `most` of these).

    To take: every bucket placed on it that nobody holds (its owner left, or its lease expired:
    `owners` says None then): their accounts wait for it. To hand over: buckets it holds that
    are placed on another live node, a few at a time, in bucket order.
    """
    take = [b for b, owner in sorted(owners.items()) if owner is None and wanted.get(b) == node]
    give = [b for b, owner in sorted(owners.items())
            if owner == node and wanted.get(b, node) != node]
    return take, give[:most]
