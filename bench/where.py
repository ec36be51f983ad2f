"""`python -m bench.where [--messages N] [--accounts N] [--way tell|batch|async]`: where (a)'s time goes.

Scenario (a)'s workload, once, through postroom with default settings and the bench's
host logging, with timers wrapped around the writer's parts (a measurement, not a
benchmark: the wrappers cost a little, alike for every part). It prints how busy the
single writer is, what its time is spent on, and how much of the machine the process
uses: a writer busy nearly all the time while the process uses about one core means
the rate is bounded by the Python work of one interpreter (the GIL), not by the disk.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.table import Table

from actors.persistence import PersistenceActor
from bench._common import Deliveries, host_logging, spread, temp_dir
from bench.systems import WAYS, open_system
from storage.store import Storage

_spent: Counter[str] = Counter()


def _timed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            _spent[name] += time.perf_counter() - start
            _spent[name + "#"] += 1

    return wrapper


def _instrument() -> None:
    """Time the writer's turns, its transactions, their COMMIT and what it does after; count
    the requests its transactions serve."""
    PersistenceActor.receive = _timed("writer", PersistenceActor.receive)  # type: ignore[method-assign]
    PersistenceActor._after_commit = _timed("after", PersistenceActor._after_commit)  # type: ignore[method-assign]
    apply_batch = PersistenceActor._apply_batch

    def counted(self: PersistenceActor, messages: Any) -> Any:
        _spent["requests"] += len(messages)
        return apply_batch(self, messages)

    PersistenceActor._apply_batch = counted  # type: ignore[method-assign]
    transaction = Storage.write_transaction

    @contextlib.contextmanager
    def write_transaction(self: Storage) -> Iterator[None]:
        start = time.perf_counter()
        with transaction(self):
            yield
            committing = time.perf_counter()
        _spent["commit"] += time.perf_counter() - committing
        _spent["transaction"] += time.perf_counter() - start
        _spent["transaction#"] += 1

    Storage.write_transaction = write_transaction  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.where", description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument("--way", choices=WAYS, default="tell")
    args = parser.parse_args(argv)
    host_logging()
    _instrument()
    items = spread(args.messages, args.accounts)
    deliveries = Deliveries(len(items))
    with temp_dir() as directory, open_system("postroom", directory, deliveries, way=args.way) as queue:
        before, start = os.times(), time.perf_counter()
        queue.enqueue_all(items)
        deliveries.wait(600)
        queue.wait_finished(len(items), 600)
        wall, after = time.perf_counter() - start, os.times()
    cpu = (after.user - before.user) + (after.system - before.system)
    table = Table(title=f"{args.messages:,} messages over {args.accounts} accounts, way {args.way}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("delivered, msg/s", f"{args.messages / wall:,.0f}"),
        ("process CPU, cores used", f"{cpu / wall:.2f}"),
        ("process CPU per message, µs", f"{cpu / args.messages * 1e6:,.0f}"),
        ("writer busy, share of the run", f"{_spent['writer'] / wall:.0%}"),
        ("  in its transactions", f"{(_spent['transaction'] - _spent['commit']) / wall:.0%}"),
        ("  in COMMIT (the fsync)", f"{_spent['commit'] / wall:.0%}"),
        ("  answering, routing, starting sends", f"{_spent['after'] / wall:.0%}"),
        ("commits", f"{_spent['transaction#']:,.0f}"),
        ("requests per commit", f"{_spent['requests'] / max(1, _spent['transaction#']):,.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


if __name__ == "__main__":
    main()
