"""`postroom demo`: the whole queue at work on a real SQLite file, against a simulated platform.

The simulated sender sleeps like a network call and fails at the configured rates;
the supervisor runs with short backoffs so retries show within seconds. The demo
watches the queue through `GetStats` until every message is finished, then prints
a summary. Exit code 0 when every message reached a final status, 1 otherwise.

The demo only ever touches a database it created and marked as its own (a SQLite
file that did not exist, or a PostgreSQL database without postroom's tables), that
no other supervisor has run on since and that holds no message the demo did not
write: any other database, a real queue above all, is refused with exit code 2
before anything is written, with or without --keep, and so is one a supervisor runs
on (`DatabaseLocked`). Its own database it starts afresh under the owner lock (the
SQLite file and its -wal/-shm deleted, or postroom's tables emptied), or adds to
with --keep; it deletes nothing else. Rate-limit warnings are counted on the live
display, and logged only with --verbose.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

import pykka
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from postroom_cli._demo_database import demo_check, demo_keys, prepare
from postroom_common import FINAL_STATUSES, Message
from supervisor import (
    AccountSettings,
    BackoffPolicy,
    Enqueue,
    EnqueueBatch,
    GetStats,
    Limits,
    PermanentError,
    Priority,
    QueueStats,
    RateLimited,
    Status,
    Supervisor,
    SupervisorSettings,
    SystemClock,
    TransientError,
    ValidationError,
)

__all__ = [
    "DEFAULT_DATABASE",
    "DemoOptions",
    "Rates",
    "SenderCounts",
    "SimulatedSender",
    "add_arguments",
    "options_from_args",
    "run",
    "run_demo",
]

DEFAULT_DATABASE = "sqlite:///postroom-demo.db"
_CHUNK = 500  # messages per EnqueueBatch: one commit each, small enough to stay responsive
_POLL_INTERVAL = 0.2  # seconds between GetStats polls (a display refresh, not a wait)
_ASK_TIMEOUT = 30.0  # seconds: a supervisor that cannot answer in this long is stuck
_PRIORITIES = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
_PRIORITY_WEIGHTS = (10, 70, 20)  # percent of the workload
_SCHEDULED_SHARE = 0.05  # of messages scheduled 1-2 s ahead, to show the scheduler
_RETRY_AFTER = 0.2  # seconds a simulated rate limit asks for
# The progress bar's label: while messages are open, once none is, when the wait gave up.
_SENDING, _FINISHED, _TIMED_OUT = "sending", "finished", "timed out"


# -- the simulated platform -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rates:
    """Probabilities of each failing outcome of a simulated send; the rest are delivered."""

    transient: float = 0.05
    """`TransientError`: retried with backoff."""
    rate_limited: float = 0.01
    """`RateLimited`: the account pauses, the attempt is not counted."""
    permanent: float = 0.0
    """`PermanentError`: the message fails at once."""


@dataclass(frozen=True, slots=True)
class SenderCounts:
    """What the simulated platform has answered so far."""

    delivered: int = 0
    """Sends that returned."""
    transient: int = 0
    """Transient failures (each one retried unless it was the last attempt)."""
    rate_limited: int = 0
    """Rate limits (each one pauses its account)."""
    permanent: int = 0
    """Permanent errors."""


class SimulatedSender:
    """A fake messaging platform: sleeps like a network call, fails at the configured rates.

    Called from every account actor's thread at once, so the random source and the
    counters sit behind one lock (the sleep does not).
    """

    def __init__(self, rates: Rates, latency: tuple[float, float], rng: random.Random,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rates = rates
        self.latency = latency
        self._rng = rng
        self._sleep = sleep
        self._lock = threading.Lock()
        self._counts = {f.name: 0 for f in fields(SenderCounts)}

    def __call__(self, message: Message) -> None:
        with self._lock:
            delay, roll = self._rng.uniform(*self.latency), self._rng.random()
        self._sleep(delay)
        kind = self._classify(roll)
        with self._lock:
            self._counts[kind] += 1
        _raise_for(kind)

    def counts(self) -> SenderCounts:
        """A snapshot of the counters."""
        with self._lock:
            return SenderCounts(**self._counts)

    def _classify(self, roll: float) -> str:
        rates = self.rates
        for kind, share in (("permanent", rates.permanent), ("rate_limited", rates.rate_limited),
                            ("transient", rates.transient)):
            if roll < share:
                return kind
            roll -= share
        return "delivered"


def _raise_for(kind: str) -> None:
    if kind == "transient":
        raise TransientError("simulated network error")
    if kind == "rate_limited":
        raise RateLimited(retry_after=_RETRY_AFTER)
    if kind == "permanent":
        raise PermanentError("simulated: the recipient blocked the bot")


# -- options ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Everything `postroom demo` can be told."""

    database: str = DEFAULT_DATABASE
    """Database URL: a new one, or one an earlier demo created (any other is refused)."""
    keep: bool = False
    """Add to what an earlier demo left in its database, instead of starting afresh."""
    accounts: int = 20
    """Sending accounts (phones) the messages are spread over."""
    messages: int = 2000
    """Messages to enqueue."""
    rates: Rates = field(default_factory=Rates)
    """How often the simulated platform fails."""
    latency: tuple[float, float] = (0.001, 0.005)
    """Seconds a simulated send takes, drawn uniformly from this range."""
    max_attempts: int = 5
    """Attempts per message before it ends failed."""
    seed: int | None = None
    """Seed of every random source, for a reproducible workload."""
    timeout: float = 120.0
    """Seconds to wait for every message to finish."""

    def __post_init__(self) -> None:
        total = self.rates.transient + self.rates.rate_limited + self.rates.permanent
        if total > 1.0:
            raise ValidationError(f"the failure rates add up to {total:g}, more than 1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `postroom demo` to its subparser."""
    add = parser.add_argument
    add("--database", default=DEFAULT_DATABASE, metavar="URL",
        help="database URL (default %(default)s): a SQLite file that does not exist yet, a "
             "PostgreSQL database without postroom's tables, or one an earlier demo created that "
             "nothing but demos has written to; any other database is refused untouched")
    add("--keep", action="store_true",
        help="add to the demo's own database instead of starting it afresh (afresh deletes "
             "only its SQLite file and -wal/-shm, or empties postroom's tables)")
    add("--verbose", action="store_true",
        help="log warnings such as each rate limit (default: errors only; the live display "
             "counts rate limits anyway)")
    add("--accounts", type=_positive_int, default=20, metavar="N",
        help="sending accounts (default %(default)s)")
    add("--messages", type=_positive_int, default=2000, metavar="N",
        help="messages to enqueue (default %(default)s)")
    add("--failure-rate", type=_probability, default=0.05, metavar="P",
        help="probability of a transient failure per send (default %(default)s)")
    add("--rate-limit-rate", type=_probability, default=0.01, metavar="P",
        help="probability of a rate limit per send (default %(default)s)")
    add("--permanent-rate", type=_probability, default=0.0, metavar="P",
        help="probability of a permanent failure per send (default %(default)s)")
    add("--latency-ms", type=_latency_ms, default="1-5", metavar="LOW-HIGH",
        help="milliseconds a simulated send takes, uniform in this range (default %(default)s)")
    add("--max-attempts", type=_positive_int, default=5, metavar="N",
        help="attempts per message before it fails (default %(default)s)")
    add("--seed", type=int, default=None, help="seed for a reproducible workload")
    add("--timeout", type=_positive_float, default=120.0, metavar="SECONDS",
        help="give up waiting after this long (default %(default)s)")


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    """The `DemoOptions` that parsed arguments describe."""
    rates = Rates(transient=args.failure_rate, rate_limited=args.rate_limit_rate,
                  permanent=args.permanent_rate)
    return DemoOptions(database=args.database, keep=args.keep, accounts=args.accounts,
                       messages=args.messages, rates=rates, latency=args.latency_ms,
                       max_attempts=args.max_attempts, seed=args.seed, timeout=args.timeout)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def _latency_ms(text: str) -> tuple[float, float]:
    """'1-5' (a uniform range) or '3' (fixed), in milliseconds, as seconds."""
    low, _, high = text.partition("-")
    try:
        bounds = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH milliseconds, not {text!r}") from None
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 0 <= LOW <= HIGH, not {text!r}")
    return (bounds[0] / 1000, bounds[1] / 1000)


# -- running ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the summary reports."""

    enqueued: int
    """Messages this run enqueued."""
    final: QueueStats
    """The queue's counts at the end."""
    baseline: QueueStats
    """The queue's counts before enqueueing (empty unless --keep)."""
    sender: SenderCounts
    """What the simulated platform answered."""
    duration: float
    """Seconds from the first enqueue to the last poll."""

    def delta(self, status: Status) -> int:
        """Messages that reached `status` during this run."""
        return self.final.by_status[status] - self.baseline.by_status[status]

    @property
    def unfinished(self) -> int:
        """Messages not in a final status at the end."""
        return _unfinished(self.final)


def run(args: argparse.Namespace, console: Console) -> int:
    """Run the demo from parsed arguments; 0 when every message finished."""
    return run_demo(options_from_args(args), console)


def run_demo(options: DemoOptions, console: Console) -> int:
    """Run the demo; 0 when every message reached a final status within the timeout."""
    console.print(prepare(options.database, keep=options.keep), markup=False, highlight=False)
    sender = SimulatedSender(options.rates, options.latency, _rng(options.seed, "sender"))
    clock = SystemClock()
    ref = Supervisor.start(options.database, sender, settings=_settings(options),
                           clock=clock, rng=_rng(options.seed, "backoff"),
                           _demo_check=demo_check(options.database))
    try:
        result = _drive(ref, options, sender, clock.now(), console)
    finally:
        ref.stop()
    _print_summary(result, console)
    return 0 if result.unfinished == 0 else 1


def _rng(seed: int | None, purpose: str) -> random.Random:
    """One independent random source per purpose, all derived from the one seed."""
    return random.Random(f"{seed}:{purpose}") if seed is not None else random.Random()


def _settings(options: DemoOptions) -> SupervisorSettings:
    # Fast retries and short pauses, so a few seconds show the whole retry machinery.
    backoff = BackoffPolicy(base=0.05, factor=2.0, max_delay=0.5, max_retry_after=1.0)
    return SupervisorSettings(
        limits=Limits(default_max_attempts=options.max_attempts),
        account=AccountSettings(backoff=backoff, storage_retry=0.2),
        cleanup_interval=None,  # the rows stay for `postroom status` to show
    )


def _drive(ref: pykka.ActorRef[Any], options: DemoOptions, sender: SimulatedSender,
           now: datetime, console: Console) -> DemoResult:
    baseline: QueueStats = _ask(ref, GetStats())
    started = time.monotonic()
    workload = _workload(options, now, _rng(options.seed, "workload"))
    enqueued = _enqueue(ref, workload)
    final = _watch(ref, sender, baseline, enqueued, started + options.timeout, console)
    return DemoResult(enqueued=enqueued, final=final, baseline=baseline,
                      sender=sender.counts(), duration=time.monotonic() - started)


def _workload(options: DemoOptions, now: datetime, rng: random.Random) -> list[Enqueue]:
    phones = [f"+1555{i:07d}" for i in range(1, options.accounts + 1)]
    key = demo_keys()  # the next demo tells its own messages from anyone else's by them
    return [_message(n, rng.choice(phones), now, rng, key(n))
            for n in range(1, options.messages + 1)]


def _message(n: int, phone: str, now: datetime, rng: random.Random, key: str) -> Enqueue:
    priority = rng.choices(_PRIORITIES, _PRIORITY_WEIGHTS)[0]
    later = now + timedelta(seconds=rng.uniform(1.0, 2.0))
    return Enqueue(phone=phone, user_id=f"user-{rng.randrange(100_000)}",
                   text=f"demo message #{n}", priority=priority,
                   scheduled_at=later if rng.random() < _SCHEDULED_SHARE else None,
                   idempotency_key=key)


def _enqueue(ref: pykka.ActorRef[Any], workload: Sequence[Enqueue]) -> int:
    ids: list[int] = []
    for start in range(0, len(workload), _CHUNK):
        ids += _ask(ref, EnqueueBatch(workload[start:start + _CHUNK]))
    return len(ids)


def _watch(ref: pykka.ActorRef[Any], sender: SimulatedSender, baseline: QueueStats,
           enqueued: int, deadline: float, console: Console) -> QueueStats:
    """Poll the counts into a progress display until nothing is open or time is up."""
    with _progress(console) as progress:
        task = _add_task(progress, total=enqueued + _unfinished(baseline))
        while True:
            stats: QueueStats = _ask(ref, GetStats())
            _show(progress, task, stats, baseline, sender.counts())
            if _unfinished(stats) == 0:
                return stats
            if time.monotonic() >= deadline:
                progress.update(task, description=_TIMED_OUT)
                return stats
            time.sleep(_POLL_INTERVAL)


def _ask(ref: pykka.ActorRef[Any], message: object) -> Any:
    return ref.ask(message, block=True, timeout=_ASK_TIMEOUT)


class _DemoProgress(Progress):
    """A progress bar with a line of counters under it (too wide for one 80-column line)."""

    counters: str = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield self.counters


def _progress(console: Console) -> _DemoProgress:
    return _DemoProgress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console,
    )


def _add_task(progress: _DemoProgress, total: int) -> TaskID:
    return progress.add_task(_SENDING, total=total)


def _show(progress: _DemoProgress, task: TaskID, stats: QueueStats, baseline: QueueStats,
          counts: SenderCounts) -> None:
    delivered = stats.by_status[Status.COMPLETED] - baseline.by_status[Status.COMPLETED]
    failed = stats.by_status[Status.FAILED] - baseline.by_status[Status.FAILED]
    # Each rate limit pauses its account: counted here, logged only with --verbose.
    progress.counters = (
        f"delivered [green]{delivered}[/] · retried [yellow]{counts.transient}[/] · "
        f"failed [red]{failed}[/] · account pauses [magenta]{counts.rate_limited}[/]")
    label = _SENDING if _unfinished(stats) else _FINISHED
    progress.update(task, completed=_finished(stats) - _finished(baseline), description=label)


def _finished(stats: QueueStats) -> int:
    return sum(stats.by_status[status] for status in FINAL_STATUSES)


def _unfinished(stats: QueueStats) -> int:
    return stats.total - _finished(stats)


# -- summary ----------------------------------------------------------------------------


def _print_summary(result: DemoResult, console: Console) -> None:
    table = Table(title="postroom demo", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    for label, value in _summary_rows(result):
        table.add_row(label, value)
    console.print(table)
    if result.unfinished:
        console.print(f"[red]{result.unfinished} message(s) still open after the timeout.[/]")


def _summary_rows(result: DemoResult) -> list[tuple[str, str]]:
    delivered = result.delta(Status.COMPLETED)
    rate = delivered / result.duration if result.duration > 0 else 0.0
    rows = [
        ("Messages enqueued", f"{result.enqueued}"),
        ("Delivered (completed)", f"[green]{delivered}[/]"),
        ("Failed", f"[red]{result.delta(Status.FAILED)}[/]"),
        ("Retried (transient failures)", f"{result.sender.transient}"),
        ("Rate-limited (account pauses)", f"{result.sender.rate_limited}"),
        ("Permanent errors", f"{result.sender.permanent}"),
        ("Duration", f"{result.duration:.2f} s"),
        ("Throughput", f"{rate:.0f} messages/s delivered"),
    ]
    if result.unfinished:
        rows.append(("Still open", f"[red]{result.unfinished}[/]"))
    return rows
