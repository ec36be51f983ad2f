"""The scenarios of issue #4, one function each, returning figures measured side by side.

Each run of each system gets a fresh temporary directory with a real SQLite file
(synchronous=FULL everywhere), and the runs of one scenario interleave the
systems (postroom, seed, huey, postroom, seed, huey, ...) so that drift of the
machine hits them alike; figures are medians over `Params.runs` runs.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import sys
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from unittest import mock

from cryptography.fernet import Fernet

from actors.persistence import CLEANUP_CHUNK
from bench._child import ChildFailed, fsync_counter, run_child
from bench._common import (
    Deliveries,
    create_postroom_file,
    median,
    percentile,
    phone,
    spread,
    temp_dir,
    wait_until,
    write_finished_rows,
    write_rows,
)
from bench.huey_baseline import HueyQueue
from bench.report import Figure
from bench.systems import WAYS, PostroomQueue, open_system, start_options
from storage.crypto import KEYS_ENV, Keyring, decode_text, encode_text
from storage.models import TABLES

__all__ = ["ALL_SYSTEMS", "QUICK", "SCENARIOS", "Params", "Samples"]

ALL_SYSTEMS = ("postroom", "nodb", "chain", "floor", "seed", "huey")


@dataclass
class Samples:
    """Every run's values per system and figure key, and the runs that failed."""

    values: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    """system -> figure key -> one value per successful run."""
    failures: dict[str, list[str]] = field(default_factory=dict)
    """system -> why each failed run failed."""


@dataclass(frozen=True, slots=True)
class Params:
    """Sizes of every scenario (the command line's options)."""

    runs: int = 3
    """Runs per system; figures are medians."""
    systems: tuple[str, ...] = ALL_SYSTEMS
    """Which systems run (a scenario skips those it does not apply to)."""
    messages: int = 100_000
    """(a) messages delivered end to end."""
    accounts: int = 100
    """(a), (b), (c), (f) sending accounts."""
    batch: int = 1_000
    """(a), (f) messages per `EnqueueBatch` (postroom's bulk path)."""
    enqueue_messages: int = 16_000
    """(b) single enqueues, spread over `enqueue_threads` threads."""
    enqueue_threads: int = 16
    """(b) threads enqueueing one message at a time."""
    bulk_messages: int = 100_000
    """(b) messages in one `EnqueueBatch`."""
    rate: float = 1_000.0
    """(c) offered load, messages per second."""
    latency_seconds: float = 10.0
    """(c) how long the load is offered."""
    producers: int = 8
    """(c) producer threads, each blocking on its durable enqueue."""
    boot_rows: int = 1_000_000
    """(d) pending rows at boot; (e) the backlog."""
    boot_accounts: int = 10_000
    """(d) accounts owning them; (e) accounts in the many-accounts case."""
    busy_accounts: int = 100
    """(e) busy accounts; they own the whole backlog in the backlog case."""
    busy_backlog: int = 200
    """(e) pending messages per busy account in the many-accounts case."""
    work_messages: int = 10_000
    """(f) messages whose database work is counted."""
    cleanup_rows: int = 1_000_000
    """(g) finished rows past retention that cleanup deletes while accounts send."""
    sleeping_accounts: int = 50_000
    """(h) accounts whose only message is due tomorrow."""
    settle: float = 1.0
    """(e) seconds after every account has sent before RSS is read."""
    rounds: int = 10
    """(e) rounds of one message to each of `round_accounts` accounts, each idling out after."""
    round_accounts: int = 20_000
    """(e) accounts sent one message each round."""
    boot_timeout: float = 600.0
    """(d), (e) seconds a boot may take to get every account sending; past it, how far it got."""
    produced: int = 300
    """(i) messages a producer process enqueues beside a running supervisor, one at a time."""
    idle_seconds: float = 10.0
    """(i) seconds an idle supervisor's queries are counted."""
    timeout: float = 900.0
    """Seconds any one run may take before it counts as failed."""


QUICK = Params(runs=1, messages=2_000, accounts=20, enqueue_messages=1_600, bulk_messages=5_000,
               rate=250.0, latency_seconds=2.0, boot_rows=10_000, boot_accounts=100, busy_accounts=10,
               busy_backlog=50, work_messages=1_000, cleanup_rows=20_000, sleeping_accounts=2_000, settle=0.5,
               rounds=3, round_accounts=1_000, boot_timeout=60.0, produced=40, idle_seconds=2.0,
               timeout=120.0)


# -- helpers ----------------------------------------------------------------------------------


def collect(p: Params, runs: Sequence[str], measure: Callable[[str], dict[str, float | None]]) -> Samples:
    """Run `measure(run)` `p.runs` times per run name, interleaved; a failed run is noted.

    A run name is a system or `system/way`; runs of systems not chosen are skipped.
    """
    samples = Samples()
    for _ in range(p.runs):
        for run in (r for r in runs if r.split("/")[0] in p.systems):
            try:
                measured = measure(run)
            except Exception as error:  # noqa: BLE001 - one system failing must not hide the others
                traceback.print_exc()
                samples.failures.setdefault(run, []).append(_summary(error))
                continue
            for key, value in measured.items():
                samples.values.setdefault(run, defaultdict(list))[key].append(value)
    return samples


def regroup(samples: Samples, columns: dict[str, str]) -> Samples:
    """The runs named in `columns` (column -> run name) under their column's name."""
    return Samples(values={c: samples.values[r] for c, r in columns.items() if r in samples.values},
                   failures={c: samples.failures[r] for c, r in columns.items() if r in samples.failures})


def figure(scenario: str, key: str, samples: Samples, name: str, unit: str, **extra: Any) -> Figure:
    """The figure `key` from every system that measured it; none from a system with a failed run."""
    per_system = {s: values[key] for s, values in samples.values.items() if key in values}
    medians = {s: None if s in samples.failures else median(v) for s, v in per_system.items()}
    failures = [f"{s} failed: {why[0]}" for s, why in samples.failures.items()]
    return Figure(scenario, name, unit, medians, per_system, failures=failures, **extra)


def _summary(error: Exception) -> str:
    text = str(error) if isinstance(error, ChildFailed) else f"{type(error).__name__}: {error}"
    return text if len(text) <= 300 else text[:300] + "..."


def _at_least(value: float | None, bound: float) -> bool:
    return value is not None and value >= bound


def _below(value: float | None, bound: float) -> bool:
    return value is not None and value < bound


# -- (a) end to end ---------------------------------------------------------------------------


#: How each of postroom's ways is named in (a)'s figures.
_WAY_NAMES = {"tell": "one tell(Enqueue) per message, plain sender",
              "batch": "EnqueueBatch of {batch:,}, plain sender",
              "async": "AsyncPostroom.enqueue_batch of {batch:,}, async def sender"}


def end_to_end(p: Params) -> list[Figure]:
    """Delivered messages/s, from the first enqueue until every outcome is recorded.

    postroom, no-db, the plain actor chain and the floor (the chain writing postroom's rows) run
    in each of `WAYS`, side by side per way (postroom's shares of no-db, of the chain and of the
    floor compare neighbours); seed and huey run once
    per round, by their only way, and every way's figure compares with those same runs.
    """
    runs = [f"{system}/{way}" for way in WAYS for system in ("postroom", "nodb", "chain", "floor")]
    runs += ["seed", "huey"]
    samples = collect(p, runs, lambda run: _end_to_end(run, p))
    return [_end_to_end_figure(p, way, samples) for way in WAYS]


def _end_to_end_figure(p: Params, way: str, samples: Samples) -> Figure:
    columns = {"postroom": f"postroom/{way}", "nodb": f"nodb/{way}", "chain": f"chain/{way}",
               "floor": f"floor/{way}", "seed": "seed",
               "huey": "huey"}
    name = (f"delivered end to end, {p.messages:,} msgs, {p.accounts} accounts: "
            + _WAY_NAMES[way].format(batch=p.batch))
    rate = figure("a", "rate", regroup(samples, columns), name, "msg/s",
                  target=">= 6x seed, 3.5x huey, 55% of no-db, 70% of chain")
    seed, huey = rate.ratio("seed"), rate.ratio("huey")
    nodb, chain = rate.ratio("nodb"), rate.ratio("chain")
    rate.met = None if None in (seed, huey, nodb, chain) else (
        _at_least(seed, 6) and _at_least(huey, 3.5) and _at_least(nodb, 0.55) and _at_least(chain, 0.7))
    return rate


def _end_to_end(run: str, p: Params) -> dict[str, float | None]:
    system, _, way = run.partition("/")
    items = spread(p.messages, p.accounts)
    deliveries = Deliveries(len(items))
    with temp_dir() as directory, open_system(system, directory, deliveries, batch=p.batch,
                                              way=way or "batch") as queue:
        start = time.perf_counter()
        queue.enqueue_all(items)
        deliveries.wait(p.timeout)
        queue.wait_finished(len(items), p.timeout)
        elapsed = time.perf_counter() - start
    return {"rate": len(items) / elapsed}


# -- (b) durable enqueue --------------------------------------------------------------------------


def enqueue(p: Params) -> list[Figure]:
    """Durable enqueue rates: one at a time from 16 threads and from 1, and postroom's bulk command."""
    samples = collect(p, ("postroom", "seed", "huey"), lambda s: _enqueue(s, p))
    many = figure("b", "threads", samples, f"single enqueues, {p.enqueue_threads} threads", "msg/s",
                  target=">= 3x per-commit rate")
    one = figure("b", "one", samples, "single enqueues, 1 thread (seed: the per-commit rate)", "msg/s")
    per_commit = one.values.get("seed")
    many.met = None if per_commit is None else _at_least(many.values.get("postroom"), 3 * per_commit)
    bulk = figure("b", "bulk", samples, f"bulk enqueue of {p.bulk_messages:,} distinct messages, "
                  "EnqueueBatch (seed, huey: none; one commit each, at their 1-thread rate)", "s",
                  higher_is_better=False, target="< 1 s")
    broadcast = figure("b", "broadcast", samples, f"broadcast of one text to {p.bulk_messages:,} "
                       "recipients, Broadcast (seed, huey: as above)", "s", higher_is_better=False,
                       target="< 1 s")
    for bulk_figure in (bulk, broadcast):
        bulk_figure.met = (_below(bulk_figure.values.get("postroom"), 1.0)
                           if p.bulk_messages >= 100_000 else None)
    return [many, one, bulk, broadcast]


def _enqueue(system: str, p: Params) -> dict[str, float | None]:
    threads = _threaded_rate(system, p.enqueue_messages, p.enqueue_threads, p)
    one = _threaded_rate(system, max(1, p.enqueue_messages // 4), 1, p)
    if system == "postroom":
        bulk, broadcast = _bulk_seconds(p, broadcast=False), _bulk_seconds(p, broadcast=True)
    else:
        bulk = broadcast = p.bulk_messages / one
    return {"threads": threads, "one": one, "bulk": bulk, "broadcast": broadcast}


def _threaded_rate(system: str, count: int, threads: int, p: Params) -> float:
    items = spread(count, p.accounts)
    with temp_dir() as directory, open_system(system, directory, Deliveries(count), scheduled_ahead=True,
                                              consume=False) as queue:
        start = time.perf_counter()
        def produce(k: int) -> None:
            for index, account in items[k::threads]:
                queue.enqueue_one(index, account)

        _in_threads(threads, produce)
        return count / (time.perf_counter() - start)


def _in_threads(count: int, work: Callable[[int], object]) -> None:
    """Run `work(k)` for k in range(count) on as many threads; re-raise the first error."""
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            work(k)
        except BaseException as error:  # noqa: BLE001 - re-raised after the join
            errors.append(error)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _bulk_seconds(p: Params, broadcast: bool) -> float:
    items = spread(p.bulk_messages, p.accounts)
    with temp_dir() as directory, open_system("postroom", directory, Deliveries(len(items)),
                                              batch=len(items), scheduled_ahead=True) as queue:
        start = time.perf_counter()
        if broadcast:
            cast(PostroomQueue, queue).broadcast(items)  # one Broadcast: answered once committed
        else:
            queue.enqueue_all(items)  # one EnqueueBatch: answered once committed
        return time.perf_counter() - start


# -- (c) latency under a steady load ---------------------------------------------------------------


def latency(p: Params) -> list[Figure]:
    """Enqueue-to-send latency at a steady offered load, from the instant each enqueue was due."""
    samples = collect(p, ("postroom", "seed", "huey"), lambda s: _latency(s, p))
    load = f"{p.rate:,.0f} msg/s for {p.latency_seconds:g} s, {p.accounts} accounts"
    p99 = figure("c", "p99", samples, f"latency p99, {load}", "ms", higher_is_better=False, target="< 20 ms")
    p99.met = _below(p99.values.get("postroom"), 20.0)
    return [figure("c", "p50", samples, f"latency p50, {load}", "ms", higher_is_better=False), p99,
            figure("c", "max", samples, f"latency max, {load}", "ms", higher_is_better=False)]


def _latency(system: str, p: Params) -> dict[str, float | None]:
    items = spread(int(p.rate * p.latency_seconds), p.accounts)
    with temp_dir() as directory:
        intended = [0.0] * len(items)  # filled once the system has started: its start is not latency
        deliveries = Deliveries(len(items), intended=intended)
        with open_system(system, directory, deliveries) as queue:
            start = time.perf_counter() + _OFFER_AFTER
            intended[:] = [start + i / p.rate for i, _ in items]
            _offer(queue.enqueue_one, items, intended, p.producers)
            deliveries.wait(p.timeout)
    ms = [1000 * x for x in deliveries.latencies]
    return {"p50": percentile(ms, 0.5), "p99": percentile(ms, 0.99), "max": max(ms)}


_OFFER_AFTER = 0.05  # s from the system's start to the first message due: the producers' threads start


def _offer(enqueue_one: Callable[[int, str], None], items: Sequence[tuple[int, str]],
           intended: Sequence[float], producers: int) -> None:
    """Each producer thread takes every `producers`-th message and enqueues it when it is due."""

    def produce(k: int) -> None:
        for index, account in items[k::producers]:
            delay = intended[index] - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            enqueue_one(index, account)

    _in_threads(producers, produce)


# -- (d) boot and (e) memory --------------------------------------------------------------------


def boot(p: Params) -> list[Figure]:
    """Start on a file with `boot_rows` pending rows over `boot_accounts` accounts (a fresh process)."""
    rows = spread(p.boot_rows, p.boot_accounts)
    samples = _boot_runs(rows, p.boot_accounts, ("postroom", "seed", "huey"), p)
    where = f"{p.boot_rows:,} pending rows, {p.boot_accounts:,} accounts"
    first = figure("d", "first_send_s", samples, f"boot to first send, {where}", "s",
                   higher_is_better=False, target="< 2 s")
    every = figure("d", "all_accounts_s", samples,
                   f"boot to every account sending (each has sent once), {where}", "s",
                   higher_is_better=False, target="< 10 s")
    first.met, every.met = _below(first.values.get("postroom"), 2), _below(every.values.get("postroom"), 10)
    every.note = _timeouts(samples, p.boot_accounts, p.boot_timeout)
    peak = figure("d", "peak_rss_mb", samples, f"peak RSS during that boot, {where}", "MiB",
                  higher_is_better=False)
    stop = figure("d", "stop_s", samples, "then a graceful stop", "s", higher_is_better=False)
    return [first, every, peak, stop]


def memory(p: Params) -> list[Figure]:
    """RSS once every account has sent, with many mostly idle accounts, and with a large backlog."""
    idle = p.boot_accounts - p.busy_accounts
    rows = spread(p.busy_accounts * p.busy_backlog, p.busy_accounts)
    rows += [(len(rows) + a, phone(p.busy_accounts + a)) for a in range(idle)]
    many = _boot_runs(rows, p.boot_accounts, ("postroom", "seed"), p)
    backlog = _boot_runs(spread(p.boot_rows, p.busy_accounts), p.busy_accounts,
                         ("postroom", "seed", "huey"), p)
    return [
        figure("e", "rss_mb", many, f"RSS, {p.boot_accounts:,} accounts of which {p.busy_accounts} busy "
               f"({p.busy_backlog} msgs each)", "MiB", higher_is_better=False,
               note=_timeouts(many, p.boot_accounts, p.boot_timeout)),
        figure("e", "rss_mb", backlog,
               f"RSS, {p.boot_rows:,}-message backlog over {p.busy_accounts} accounts", "MiB",
               higher_is_better=False, note=_timeouts(backlog, p.busy_accounts, p.boot_timeout)),
        figure("e", "rss_before_mb", backlog, "RSS of the bare interpreter with the imports, for reference",
               "MiB", higher_is_better=False),
        *_rounds_figures(p),
    ]


#: (e)'s rounds: seconds an account waits idle before it stops (the default is 30: a round would
#: take that long).
ROUND_IDLE = 1.0


def _rounds_figures(p: Params) -> list[Figure]:
    """RSS after the first and the last of `rounds` rounds of one-message accounts (postroom)."""
    with temp_dir() as directory:
        template = directory / "template.db"
        create_postroom_file(template)

        def measure(system: str) -> dict[str, float | None]:
            run = directory / "run.db"
            shutil.copyfile(template, run)
            try:
                args = {"path": str(run), "accounts": p.round_accounts, "rounds": p.rounds,
                        "idle_timeout": ROUND_IDLE, "timeout": p.boot_timeout}
                return run_child("rounds", args, timeout=p.rounds * p.boot_timeout + 120)
            finally:
                for suffix in ("", "-wal", "-shm", ".lock"):
                    Path(f"{run}{suffix}").unlink(missing_ok=True)

        samples = collect(p, ("postroom",), measure)
    where = f"{p.round_accounts:,} accounts sending one message, then idling out"
    return [
        figure("e", "rss_first_mb", samples, f"RSS after 1 round of {where}", "MiB", higher_is_better=False),
        figure("e", "rss_last_mb", samples, f"RSS after {p.rounds} rounds of {where}", "MiB",
               higher_is_better=False),
        figure("e", "send_threads", samples, "  send threads alive at most, those rounds", "threads",
               higher_is_better=False),
    ]


def _boot_runs(rows: Sequence[tuple[int, str]], accounts: int, systems: Sequence[str], p: Params) -> Samples:
    with temp_dir() as directory:
        postroom_file = _template(directory, "postroom", rows)  # the seed reads the same table
        huey_file = _template(directory, "huey", rows) if "huey" in systems and "huey" in p.systems else None
        templates = {"postroom": postroom_file, "seed": postroom_file, "huey": huey_file}

        def measure(system: str) -> dict[str, float | None]:
            run = directory / f"run-{system}.db"
            template = templates[system]
            assert template is not None
            shutil.copyfile(template, run)
            try:
                args = {"system": system, "path": str(run), "accounts": 0 if system == "huey" else accounts,
                        "timeout": p.boot_timeout, "settle": p.settle}
                return run_child("boot", args, timeout=2 * p.boot_timeout + 120)
            finally:
                for suffix in ("", "-wal", "-shm", ".lock"):
                    Path(f"{run}{suffix}").unlink(missing_ok=True)

        return collect(p, systems, measure)


def _timeouts(samples: Samples, accounts: int, timeout: float) -> str:
    """Which systems' boots timed out, and how many accounts had sent by then."""
    said = []
    for system, values in samples.values.items():
        for timed_out, seen in zip(values["timed_out"], values["accounts_sent"], strict=True):
            if timed_out:
                said.append(f"{system} timed out: {seen:,.0f} of {accounts:,} accounts had sent after "
                            f"{timeout:g} s")
    return "; ".join(said)


def _template(directory: Path, system: str, rows: Sequence[tuple[int, str]]) -> Path:
    """The start file: postroom's table (postroom, seed) or huey's task table, with `rows` pending."""
    path = directory / f"template-{system}.db"
    if system != "huey":
        create_postroom_file(path)
        write_rows(path, rows)
        return path
    huey = HueyQueue(path, Deliveries(0))
    blob, name = huey.task_blob(0, rows[0][1]), huey.huey.storage.name
    huey.stop()
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO task (queue, data, priority) VALUES (?, ?, 0)",
                               ((name, blob) for _ in rows))
        connection.execute("COMMIT")
    finally:
        connection.close()
    return path


# -- (f) database work per message --------------------------------------------------------------


def database_work(p: Params) -> list[Figure]:
    """Statements, transactions and fsyncs per message over scenario (a)'s workload."""
    counted = fsync_counter() is not None
    samples = collect(p, ("postroom", "seed", "huey"), lambda s: _work(s, p, counted))
    where = f"{p.work_messages:,} msgs end to end, {p.accounts} accounts"
    estimated = " (ESTIMATED = transactions: no C compiler)"
    fsync_name = f"fsyncs per message, {where}" + ("" if counted else estimated)
    fsyncs = figure("f", "fsyncs", samples, fsync_name, "per msg", higher_is_better=False, target="< 0.1")
    fsyncs.met = _below(fsyncs.values.get("postroom"), 0.1)
    return [
        figure("f", "statements", samples, f"SQL statements per message (BEGIN/COMMIT excluded), {where}",
               "per msg", higher_is_better=False),
        figure("f", "writes", samples, "  of which INSERT/UPDATE/DELETE", "per msg", higher_is_better=False),
        figure("f", "transactions", samples, f"transactions (COMMITs) per message, {where}", "per msg",
               higher_is_better=False),
        fsyncs,
    ]


def _work(system: str, p: Params, counted: bool) -> dict[str, float | None]:
    args = {"system": system, "messages": p.work_messages, "accounts": p.accounts, "batch": p.batch,
            "timeout": p.timeout}
    result = run_child("work", args, timeout=p.timeout + 120, count_fsyncs=counted)
    counts: dict[str, int] = result["counts"]
    n = result["messages"]
    commits = counts.get("COMMIT", 0)
    statements = sum(v for k, v in counts.items() if k not in ("BEGIN", "COMMIT", "ROLLBACK"))
    writes = sum(counts.get(k, 0) for k in ("INSERT", "UPDATE", "DELETE"))
    return {"statements": statements / n, "writes": writes / n, "transactions": commits / n,
            "fsyncs": (result["fsyncs"] if counted else commits) / n}


# -- (g) cleanup beside sending --------------------------------------------------------------


def cleanup(p: Params) -> list[Figure]:
    """Delete `cleanup_rows` old finished rows while 100 paced accounts send; the longest pause."""
    samples = collect(p, ("postroom",), lambda _: _cleanup(p))
    where = f"{p.cleanup_rows:,} finished rows, {p.accounts} accounts sending ~1,000 msg/s"
    longest = figure("g", "gap_cleanup_ms", samples,
                     f"longest pause between two sends during cleanup, {where}", "ms", higher_is_better=False)
    return [
        figure("g", "cleanup_s", samples,
               f"cleanup of {p.cleanup_rows:,} rows ({CLEANUP_CHUNK:,} per transaction)", "s",
               higher_is_better=False),
        longest,
        figure("g", "gap_baseline_ms", samples, "longest pause between two sends in the 0.9 s before it",
               "ms", higher_is_better=False),
        figure("g", "sends_during", samples, "sends during the cleanup", "msgs"),
    ]


def _cleanup(p: Params) -> dict[str, float | None]:
    from datetime import UTC, datetime, timedelta

    from supervisor import CleanupNow, Enqueue, EnqueueBatch, Pacing, Supervisor, SupervisorSettings

    sent: list[float] = []
    with temp_dir() as directory:
        path = directory / "cleanup.db"
        create_postroom_file(path)
        write_finished_rows(path, p.cleanup_rows, datetime.now(UTC) - timedelta(days=30))
        rate = 1_000 / p.accounts  # per account: together a steady 1,000 msg/s
        # Defaults but the pacing, which makes the steady load the pauses are measured in.
        settings = SupervisorSettings(pacing=Pacing(rate=rate, burst=1))
        ref = Supervisor.start(database=f"sqlite:///{path}",
                               sender=lambda _: sent.append(time.perf_counter()), settings=settings)
        try:
            # Enough work to outlast a cleanup as slow as 5,000 rows/s: a busy machine is slower.
            per_account = int((p.cleanup_rows / 5_000 + 5) * rate)
            for start in range(0, per_account, 50):
                ref.ask(EnqueueBatch([Enqueue(phone=phone(a), user_id=str(i), text="x")
                                      for a in range(p.accounts) for i in range(start, start + 50)]))
            time.sleep(1.0)  # every account is sending
            began = time.perf_counter()
            ref.ask(CleanupNow(), timeout=p.timeout)
            ended = time.perf_counter()
            time.sleep(0.1)
        finally:
            ref.stop()
    during = [t for t in sent if began <= t <= ended]
    before = [t for t in sent if began - 0.9 <= t < began]
    if not during or sent[-1] < ended:
        raise RuntimeError("sending stopped before the cleanup ended: the pause cannot be measured")
    return {"cleanup_s": ended - began, "gap_cleanup_ms": _longest_gap([began, *during, ended]) * 1000,
            "gap_baseline_ms": _longest_gap(before) * 1000 if len(before) > 1 else None,
            "sends_during": float(len(during))}


def _longest_gap(times: Sequence[float]) -> float:
    return max(b - a for a, b in itertools.pairwise(times))


# -- (h) a boot where nothing is due yet ----------------------------------------------------------


def sleeping_boot(p: Params) -> list[Figure]:
    """Boot on `sleeping_accounts` accounts whose messages are due tomorrow, then send one now."""
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    rows = [(n, phone(n)) for n in range(p.sleeping_accounts)]
    with temp_dir() as directory:
        template = directory / "template.db"
        create_postroom_file(template)
        write_rows(template, rows, due=tomorrow)

        def measure(system: str) -> dict[str, float | None]:
            run = directory / "run.db"
            shutil.copyfile(template, run)
            try:
                return run_child("sleeping_boot", {"path": str(run), "timeout": p.timeout},
                                 timeout=p.timeout + 120)
            finally:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{run}{suffix}").unlink(missing_ok=True)

        samples = collect(p, ("postroom",), measure)
    where = f"{p.sleeping_accounts:,} accounts with work due tomorrow"
    actors = figure("h", "actors", samples, f"account actors started at boot, {where}", "actors",
                    higher_is_better=False, target="0")
    actors.met = actors.values.get("postroom") == 0
    latency = figure("h", "new_message_ms", samples, f"then a new message due now: enqueue to send, {where}",
                     "ms", higher_is_better=False, target="< 100 ms")
    latency.met = _below(latency.values.get("postroom"), 100)
    return [actors, latency,
            figure("h", "boot_s", samples, f"boot, {where}", "s", higher_is_better=False),
            figure("h", "rss_mb", samples, f"RSS after that boot, {where}", "MiB", higher_is_better=False)]


# -- (i) another process enqueues -----------------------------------------------------------------

#: Seconds between two enqueues of the producer process: one message at a time, as a web app's.
_PRODUCER_INTERVAL = 0.02


def other_process(p: Params) -> list[Figure]:
    """A producer process enqueues beside a running supervisor (default settings): from its
    commit to the send's start; and the queries an idle supervisor makes. SQLite, and
    PostgreSQL with LISTEN when a server answers (POSTROOM_TEST_POSTGRES)."""
    backends = {"sqlite": None, **({"postgresql": url} if (url := postgres_url()) else {})}
    figures: list[Figure] = []
    for backend, url in backends.items():
        samples = collect(p, ("postroom",), lambda _run, url=url: _other_process(p, url))
        where = f"{backend}, {p.produced} single enqueues {_PRODUCER_INTERVAL * 1000:.0f} ms apart"
        p99 = figure("i", "p99_ms", samples, f"producer process: commit to send, p99, {where}", "ms",
                     higher_is_better=False, target="< 50 ms" if url else "< 250 ms")
        p99.met = _below(p99.values.get("postroom"), 50 if url else 250)
        figures += [figure("i", "p50_ms", samples, f"producer process: commit to send, p50, {where}", "ms",
                           higher_is_better=False), p99,
                    figure("i", "idle_qps", samples, f"idle supervisor: queries per second, {backend}",
                           "q/s", higher_is_better=False)]
    return figures


def postgres_url() -> str | None:
    """The benchmark's PostgreSQL (the tests' variable), if a server answers there."""
    import os

    url = os.environ.get("POSTROOM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=2).close()
    except Exception:  # noqa: BLE001 - no server, no driver: SQLite only
        return None
    return url


def _other_process(p: Params, url: str | None) -> dict[str, float | None]:
    import subprocess

    from bench._child import ROOT
    from supervisor import Supervisor

    with temp_dir() as directory:
        if url is None:
            url = f"sqlite:///{directory}/postroom.db"
        else:
            _empty_postgres(url)
        sent: dict[int, float] = {}
        ref = Supervisor.start(database=url, sender=lambda m: sent.setdefault(m.id, time.time()))
        try:
            idle_qps = _idle_queries(p.idle_seconds)
            child = subprocess.run([sys.executable, "-m", "bench._producer", url, str(p.produced),
                                    str(_PRODUCER_INTERVAL)], cwd=ROOT, capture_output=True, text=True,
                                   timeout=p.timeout, check=True)
            committed = {int(i): float(at) for i, at in (line.split() for line in child.stdout.split("\n")
                                                         if line and line != "done")}
            deadline = time.monotonic() + 30
            while len(sent) < len(committed) and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            ref.stop()
    delays = sorted((sent[i] - at) * 1000 for i, at in committed.items() if i in sent)
    if len(delays) < len(committed):
        raise RuntimeError(f"only {len(delays)} of {len(committed)} produced messages were sent")
    return {"p50_ms": percentile(delays, 0.5), "p99_ms": percentile(delays, 0.99), "idle_qps": idle_qps}


def _idle_queries(seconds: float) -> float:
    """Statements every connection of this process runs per second while nothing happens."""
    import peewee

    counted = [0]
    execute = peewee.Database.execute_sql

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        counted[0] += 1
        return execute(self, *args, **kwargs)

    time.sleep(1.0)  # boot's own reads are over
    peewee.Database.execute_sql = counting  # type: ignore[method-assign]
    try:
        time.sleep(seconds)
    finally:
        peewee.Database.execute_sql = execute  # type: ignore[method-assign]
    return counted[0] / seconds


def _empty_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute("DROP SEQUENCE IF EXISTS message_queue_id_seq")


# -- (j) (a) with encryption at rest ----------------------------------------------------------


def encrypted(p: Params) -> list[Figure]:
    """(a)'s delivered rate with every text encrypted (`POSTROOM_ENCRYPTION_KEYS` set), beside
    the same runs without, alternated; and what encryption costs each message."""
    figures = _beside_a(p, "j", ("plain", "encrypted"), ("plain", "text encrypted"), "encryption's",
                        lambda run: _encrypted(run, p))
    cpu = collect(p, ["postroom"], lambda _: {"cpu": _seal_and_open_micros(p.messages)})
    return [*figures, figure("j", "cpu", cpu, "one text (as (a)'s) encrypted then decrypted, "
                             "in one thread, without the queue", "us", higher_is_better=False)]


def _seal_and_open_micros(count: int) -> float:
    """Microseconds to encrypt then decrypt one short text as storage does, on average."""
    keys = Keyring([Fernet.generate_key()])
    start = time.perf_counter()
    for index in range(count):
        decode_text(encode_text(str(index), keys), keys)
    return 1e6 * (time.perf_counter() - start) / count


def _encrypted(run: str, p: Params) -> dict[str, float | None]:
    system_and_way, _, mode = run.rpartition("/")
    keys = {KEYS_ENV: Fernet.generate_key().decode()} if mode == "encrypted" else {}
    # The supervisor's Storage reads the variable once, as it starts inside the run.
    with mock.patch.dict(os.environ, keys):
        if mode == "plain":
            os.environ.pop(KEYS_ENV, None)
        return _end_to_end(system_and_way, p)


# -- (k) (a) with Prometheus metrics -------------------------------------------------------------

#: Seconds between two scrapes of (k)'s registry (a Prometheus scrapes every 15 s by default).
SCRAPE_EVERY = 5.0


def with_metrics(p: Params) -> list[Figure]:
    """(a)'s delivered rate with `Metrics` on a registry scraped every `SCRAPE_EVERY` seconds,
    beside the same runs without, alternated; and what metrics cost each message."""
    return _beside_a(p, "k", ("plain", "metrics"),
                     ("no metrics", f"metrics scraped every {SCRAPE_EVERY:g} s"), "metrics'",
                     lambda run: _with_metrics(run, p))


def _beside_a(p: Params, scenario: str, modes: tuple[str, str], shown: tuple[str, str], what: str,
              run: Callable[[str], dict[str, float | None]]) -> list[Figure]:
    """(a) in each of its ways without and with a variant (`modes`: the runs' names, `shown`:
    the figures'), alternated; each way's two rates and the variant's cost per message
    (1/variant rate - 1/plain rate), named after `what`."""
    runs = [f"postroom/{way}/{mode}" for way in WAYS for mode in modes]
    samples = collect(p, runs, run)
    figures = []
    for way in WAYS:
        name = f"(a) {p.messages:,} msgs, {_WAY_NAMES[way].format(batch=p.batch)}"
        base, variant = (figure(scenario, "rate", regroup(samples, {"postroom": f"postroom/{way}/{mode}"}),
                                f"{name}, {label}", "msg/s")
                         for mode, label in zip(modes, shown, strict=True))
        rates = base.values.get("postroom"), variant.values.get("postroom")
        cost = None if None in rates else 1e6 * (1 / rates[1] - 1 / rates[0])  # type: ignore[operator]
        figures += [base, variant, Figure(scenario, f"{name}: {what} cost per message", "us",
                                          {"postroom": cost}, higher_is_better=False)]
    return figures


def _with_metrics(run: str, p: Params) -> dict[str, float | None]:
    system_and_way, _, mode = run.rpartition("/")
    if mode == "plain":
        return _end_to_end(system_and_way, p)
    from prometheus_client import CollectorRegistry, generate_latest

    from actors.metrics import Metrics

    registry, done = CollectorRegistry(), threading.Event()

    def scrape() -> None:
        while not done.wait(SCRAPE_EVERY):
            generate_latest(registry)

    scraper = threading.Thread(target=scrape, name="bench-scraper", daemon=True)
    scraper.start()
    try:
        with start_options(metrics=Metrics(registry)):
            return _end_to_end(system_and_way, p)
    finally:
        done.set()
        scraper.join()


# -- (l) several sending processes on PostgreSQL ---------------------------------------------------

#: (l)'s deployments: (name shown, child mode, processes).
_DEPLOYMENTS = {"single": ("one supervisor (no nodes)", "single", 1),
                "one-node": ("one node", "node", 1),
                "two-nodes": ("two nodes", "node", 2)}


def nodes(p: Params) -> list[Figure]:
    """(a)'s workload on PostgreSQL, sent by one supervisor, one node and two node processes
    (alternated), enqueued by `EnqueueBatch` from a producer in the benchmark's process: what a
    second sending process adds on this machine. Needs a server (POSTROOM_TEST_POSTGRES)."""
    url = postgres_url()
    if url is None:
        print("scenario (l) left out: no PostgreSQL answers at POSTROOM_TEST_POSTGRES", file=sys.stderr)
        return []
    samples = collect(p, [f"postroom/{name}" for name in _DEPLOYMENTS], lambda run: _nodes(run, p, url))
    where = f"{p.messages:,} msgs, {p.accounts} accounts, EnqueueBatch of {p.batch:,} from a producer"
    figures = [figure("l", "rate", regroup(samples, {"postroom": f"postroom/{name}"}),
                      f"delivered end to end on PostgreSQL, {where}: {shown}", "msg/s")
               for name, (shown, _, _) in _DEPLOYMENTS.items()]
    single, one, two = (f.values.get("postroom") for f in figures)
    for base, label in ((one, "one node"), (single, "one supervisor")):
        ratio = None if two is None or not base else two / base
        figures.append(Figure("l", f"two nodes / {label}, {where}", "x", {"postroom": ratio}))
    return figures


def _nodes(run: str, p: Params, url: str) -> dict[str, float | None]:
    import subprocess

    from bench._child import ROOT
    from storage import Storage, open_database
    from supervisor import Enqueue, Producer

    _, mode, processes = _DEPLOYMENTS[run.partition("/")[2]]
    _empty_postgres(url)
    store = Storage(open_database(url))
    store.create_schema()
    children = [subprocess.Popen([sys.executable, "-m", "bench._node", url, mode], cwd=ROOT, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(processes)]
    try:
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a {mode} process did not start (exit code {child.wait(10)})")
        if mode == "node":
            _wait_placed(store, processes, p.timeout)
        items = spread(p.messages, p.accounts)
        with Producer(url) as producer:
            start = time.perf_counter()
            for begin in range(0, len(items), p.batch):
                producer.enqueue_batch([Enqueue(phone=phone, user_id="u", text=str(index))
                                        for index, phone in items[begin:begin + p.batch]])
            wait_until(lambda: store.count_open() == 0, p.timeout, f"{len(items)} sent", interval=0.05)
            elapsed = time.perf_counter() - start
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
        for child in children:
            child.wait(p.timeout)
        store.close_all()
    return {"rate": len(items) / elapsed}


def _wait_placed(store: Any, processes: int, timeout: float) -> None:
    """Until `processes` nodes are live and every bucket is held by the node the rendezvous
    placement gives it (the database was emptied first: every node is one of these)."""
    from postroom_common.buckets import placement

    def placed() -> bool:
        live, owners = store.bucket_owners()
        return len(live) == processes and owners == placement(live)

    wait_until(placed, timeout, f"the buckets placed over {processes} nodes", interval=0.2)


SCENARIOS: dict[str, Callable[[Params], list[Figure]]] = {
    "a": end_to_end, "b": enqueue, "c": latency, "d": boot, "e": memory, "f": database_work, "g": cleanup,
    "h": sleeping_boot, "i": other_process, "j": encrypted, "k": with_metrics, "l": nodes,
}
