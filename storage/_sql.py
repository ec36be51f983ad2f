"""Small helpers of the SQL that `storage` writes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

__all__ = ["ID_CHUNK", "chunks"]

ID_CHUNK = 500  # ids per IN (...) list, far below every backend's parameter limit

_T = TypeVar("_T")


def chunks(values: Sequence[_T]) -> Iterator[tuple[list[_T], str]]:
    """`values` in lists short enough for one IN (...) (PostgreSQL takes at most 65,535
    parameters), each with its `?` marks."""
    for start in range(0, len(values), ID_CHUNK):
        chunk = list(values[start:start + ID_CHUNK])
        yield chunk, ", ".join("?" * len(chunk))
