"""Prometheus metrics (the optional `[metrics]` extra) on a registry the host passes in.

What the process sees happen is counted where it happens, in memory: the writer counts
the outcomes, retries, pauses and claims of each commit it made (`Metrics.committed`,
in plain numbers, each counter told once per commit) and times the commit; a send's ticket
times the send; the supervisor counts restarts. What only the database knows (how many
messages wait, since when the oldest due one has waited) and the supervisor's own
view (parked and disabled accounts, buckets held, the lease's last renewal) are read
by a collector when the registry is scraped, at most once per `read_every`: scrapes
in between are answered from that read. Nothing is registered anywhere but on the
host's registry; a supervisor started without a `Metrics` builds none of it.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import accumulate
from typing import TYPE_CHECKING, Any, cast

import pykka

from actors.hooks import AccountEventKind, OutcomeEvent, events_of_commit, settled_by
from actors.messages import Recorded
from actors.privacy import mask_phone
from postroom_common import Message, Status, ValidationError
from postroom_common.checks import check_seconds
from postroom_common.logs import get_logger

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

__all__ = ["Gauges", "GetGauges", "Metrics"]

log = get_logger("postroom.metrics")

_INSTALL = "Metrics needs prometheus-client: install the [metrics] extra (pip install 'postroom[metrics]')"

#: Seconds: a send, from a fast API call to a sender's timeout.
SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Seconds from enqueue to the first send: from an idle queue's instant to a backlog's hours.
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
#: Writes per commit: one caller alone up to the writer's `max_batch`.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
#: Seconds a commit takes: an fsync of a fast disk up to a stalled database.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


@dataclass(frozen=True, slots=True)
class GetGauges:
    """To the supervisor, from the collector: what the gauges show now (answered `Gauges`)."""

    per_account: bool
    """Read the depth and the oldest due message per account too."""


@dataclass(frozen=True, slots=True)
class Gauges:
    """One reading of the database and of the supervisor's view, for a scrape."""

    by_status: dict[Status, int]
    """Messages by status."""
    oldest_due_at: datetime | None
    """Since when the longest-waiting due open message has been due; None when none is."""
    at: datetime
    """When the database was read (the clock of the supervisor)."""
    accounts_running: int
    """Account actors running."""
    parked: int
    """Accounts parked (crashed too often)."""
    disabled: int
    """Accounts disabled (suspended without a duration)."""
    buckets_held: int | None = None
    """Buckets this node sends for; None without `SupervisorSettings.nodes`."""
    lease_renew_lag: float | None = None
    """Seconds since the start of the lease's last renewal; None without nodes."""
    by_account: dict[str, dict[Status, int]] = field(default_factory=dict)
    """Per account (asked for only): messages by status."""
    oldest_by_account: dict[str, datetime] = field(default_factory=dict)
    """Per account with a due message (asked for only): since when its oldest has been due."""


class Metrics:
    """postroom's metrics, registered on `registry`; give it to `Supervisor.start(..., metrics=)`
    (or `AsyncPostroom.start`). One supervisor at a time reports through it; its counters
    go on across a supervisor's stop and the next start."""

    def __init__(self, registry: CollectorRegistry, *, per_account: bool = False,
                 read_every: float = 5.0, read_timeout: float = 5.0) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter  # the extra is optional
        except ImportError as error:
            raise ValidationError(_INSTALL) from error
        if not isinstance(registry, CollectorRegistry):
            raise ValidationError(f"Metrics needs a prometheus_client CollectorRegistry, "
                                  f"not a {type(registry).__name__}")
        check_seconds("Metrics.read_every", read_every)
        check_seconds("Metrics.read_timeout", read_timeout)

        def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.messages = counter("postroom_messages", "Messages that reached a final outcome "
                                "(completed, failed, cancelled).", ["outcome"])
        self.retries = counter("postroom_retries", "Attempts that failed, or were lost with their "
                               "sender, and left the message to retry.")
        self.pauses = counter("postroom_account_pauses", "Accounts paused for a time (a rate limit, or a "
                              "suspension with a duration), by the exception that paused them.", ["reason"])
        self.disablements = counter("postroom_account_disablements",
                                    "Accounts disabled (suspended without a duration).")
        self.restarts = counter("postroom_account_restarts", "Account actors restarted after a crash.")
        self.send_duration = _Histogram("postroom_send_duration_seconds", "How long the sender took (to "
                                        "a send timeout at most).", SEND_BUCKETS, registry)
        self.latency = _Histogram("postroom_enqueue_to_send_seconds", "From enqueue (or the schedule) to "
                                  "the first attempt's claim.", LATENCY_BUCKETS, registry)
        self.batch_size = _Histogram("postroom_commit_batch_size", "Writes committed together by the writer.",
                                     BATCH_BUCKETS, registry)
        self.commit_duration = _Histogram("postroom_commit_duration_seconds", "How long the writer's "
                                          "transactions took, commit included.", COMMIT_BUCKETS, registry)
        # Each outcome's child made once: shown from the start at zero, and no look-up per message.
        self._by_outcome = {outcome: self.messages.labels(outcome.value)
                            for outcome in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)}
        self.reader = _GaugeReader(per_account, read_every, read_timeout)
        registry.register(self.reader)

    # -- what the process sees happen -----------------------------------------------------

    def committed(self, requests: Sequence[Any], outcomes: Sequence[Any], now: datetime) -> None:
        """Count what one commit of the writer made: the outcomes it made final, the retries it
        recorded or settled, the pauses it wrote and the first attempts it claimed. Tallied in
        plain numbers, then each counter is told once per commit: the writer's turn pays no
        lock per message. An account's plain record (nearly every write) is counted as it
        is; anything else as its outcome hooks' events (`events_of_commit`)."""
        finals = dict.fromkeys(self._by_outcome, 0)
        pauses: dict[str, int] = {}
        retries = disablements = 0
        waited = []
        for request, outcome in zip(requests, outcomes, strict=True):
            if type(outcome) is Recorded:  # an account's write (`RecordAndClaim`): nearly every request
                record = request.record if outcome.applied else None
                if record is not None and record.status is Status.RETRYING and not record.give_back:
                    retries += 1
                claimed = outcome.claimed
                if claimed is not None and claimed.attempts == 1:
                    waited.append(max(0.0, (now - _enqueued(claimed)).total_seconds()))
                if request.pause is None and not outcome.settled:
                    if record is not None and record.status in finals:
                        finals[record.status] += 1
                    continue
            for event in events_of_commit([request], [outcome], now):
                if isinstance(event, OutcomeEvent):
                    finals[event.status] += 1
                elif event.kind is AccountEventKind.PAUSED:
                    pauses[event.reason] = pauses.get(event.reason, 0) + 1
                elif event.kind is AccountEventKind.DISABLED:
                    disablements += 1
            retries += sum(message.status is Status.RETRYING for message in settled_by(request, outcome))
        for status, count in finals.items():
            if count:
                self._by_outcome[status].inc(count)
        for reason, count in pauses.items():
            self.pauses.labels(reason).inc(count)
        if disablements:
            self.disablements.inc(disablements)
        if retries:
            self.retries.inc(retries)
        self.latency.observe_all(waited)

    def commit_took(self, writes: int, seconds: float) -> None:
        """A commit of `writes` writes took `seconds`."""
        self.batch_size.observe(writes)
        self.commit_duration.observe(seconds)

    def send_took(self, seconds: float) -> None:
        """A send returned, raised or timed out after `seconds`."""
        self.send_duration.observe(seconds)

    def restarted(self) -> None:
        """An account actor was restarted after a crash."""
        self.restarts.inc()

    # -- the supervisor reporting through it ----------------------------------------------

    def attach(self, supervisor: pykka.ActorRef[Any]) -> None:
        """The supervisor whose gauges the scrapes read (at its start)."""
        self.reader.attach(supervisor)

    def detach(self, supervisor: pykka.ActorRef[Any]) -> None:
        """The supervisor stopped: its gauges are no longer shown (a later one's may be)."""
        self.reader.detach(supervisor)


class _Histogram:
    """A histogram in plain numbers, shown by its own collector on the registry. The writer
    adds a commit's observations under one lock (`observe_all`), where a prometheus_client
    `Histogram` takes two locks and walks its buckets for each observation."""

    def __init__(self, name: str, documentation: str, bounds: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = tuple(float(bound) for bound in bounds)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()  # sends end on several threads at once
        registry.register(self)

    def observe(self, value: float) -> None:
        """One observation."""
        index = bisect_left(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def observe_all(self, values: Sequence[float]) -> None:
        """Several observations, under one lock."""
        if not values:
            return
        indexes = [bisect_left(self._bounds, value) for value in values]
        total = sum(values)
        with self._lock:
            for index in indexes:
                self._counts[index] += 1
            self._sum += total

    def describe(self) -> list[Metric]:
        return [self._family([0] * len(self._counts), 0.0)]

    def collect(self) -> list[Metric]:
        with self._lock:  # buckets, count and sum from one instant
            counts, total = list(self._counts), self._sum
        return [self._family(counts, total)]

    def _family(self, counts: Sequence[int], total: float) -> Metric:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        bounds = [*map(floatToGoString, self._bounds), "+Inf"]
        return HistogramMetricFamily(self.name, self.documentation, sum_value=total,
                                     buckets=list(zip(bounds, accumulate(counts), strict=True)))


def _enqueued(message: Message) -> datetime:
    """When a message could first be sent: its schedule is not lateness."""
    return max(message.created_at, message.scheduled_at or message.created_at)


class _GaugeReader:
    """A prometheus_client collector: asks the supervisor for `Gauges`, at most once per
    `read_every`, and shows the last reading meanwhile."""

    def __init__(self, per_account: bool, read_every: float, read_timeout: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.per_account = per_account
        self.read_every = read_every
        self.read_timeout = read_timeout
        self._monotonic = monotonic
        self._lock = threading.Lock()  # scrapes may come on several threads at once
        self._supervisor: pykka.ActorRef[Any] | None = None
        self._last: Gauges | None = None
        self._read_at: float | None = None
        self.reads = 0
        """Readings asked of the supervisor so far."""

    def attach(self, supervisor: pykka.ActorRef[Any]) -> None:
        with self._lock:
            self._supervisor, self._last, self._read_at = supervisor, None, None

    def detach(self, supervisor: pykka.ActorRef[Any]) -> None:
        with self._lock:
            if self._supervisor is supervisor:
                self._supervisor, self._last, self._read_at = None, None, None

    def collect(self) -> Iterator[Metric]:
        gauges = self._gauges()
        return iter(() if gauges is None else _families(gauges, self.per_account))

    def _gauges(self) -> Gauges | None:
        with self._lock:
            now = self._monotonic()
            if self._read_at is not None and now - self._read_at < self.read_every:
                return self._last
            supervisor = self._supervisor
            if supervisor is None:
                return None
            self._read_at = now  # a failed read is not tried again before `read_every` either
            self.reads += 1
            try:
                answer = supervisor.ask(GetGauges(self.per_account), timeout=self.read_timeout)
                self._last = cast(Gauges, answer)
            except pykka.ActorDeadError:
                self._last = None
            except Exception as error:  # noqa: BLE001 - a scrape must answer: the gauges are left out
                self._last = None
                log.warning("metrics.read_failed", error=type(error).__name__, reason=str(error))
            return self._last


def _families(gauges: Gauges, per_account: bool) -> list[Metric]:
    from prometheus_client.core import GaugeMetricFamily

    depth = GaugeMetricFamily("postroom_queue_messages", "Messages in the database by status.",
                              labels=["status"])
    for status, count in gauges.by_status.items():
        depth.add_metric([status.value], count)
    oldest = GaugeMetricFamily("postroom_queue_oldest_due_age_seconds", "How long the longest-waiting "
                               "due open message has been due (zero when none is).")
    oldest.add_metric([], _age(gauges.oldest_due_at, gauges.at))
    families: list[Metric] = [depth, oldest,
                GaugeMetricFamily("postroom_accounts_running", "Account actors running.",
                                  value=gauges.accounts_running),
                GaugeMetricFamily("postroom_accounts_parked", "Accounts parked: they crashed too often.",
                                  value=gauges.parked),
                GaugeMetricFamily("postroom_accounts_disabled", "Accounts suspended without a duration.",
                                  value=gauges.disabled)]
    if gauges.buckets_held is not None:
        families.append(GaugeMetricFamily("postroom_node_buckets_held", "Buckets of accounts this node "
                                          "sends for.", value=gauges.buckets_held))
    if gauges.lease_renew_lag is not None:
        families.append(GaugeMetricFamily("postroom_node_lease_renew_lag_seconds", "Since the start of "
                                          "the node's last successful lease renewal.",
                                          value=gauges.lease_renew_lag))
    if per_account:
        families += _account_families(gauges)
    return families


def _account_families(gauges: Gauges) -> list[Metric]:
    """Per account, its phone masked (`mask_phone`): a scrape is stored and shown off the host."""
    from prometheus_client.core import GaugeMetricFamily

    depth = GaugeMetricFamily("postroom_account_queue_messages", "Messages in the database by account "
                              "and status.", labels=["account", "status"])
    for phone, counts in sorted(gauges.by_account.items()):
        for status, count in counts.items():
            depth.add_metric([mask_phone(phone), status.value], count)
    oldest = GaugeMetricFamily("postroom_account_oldest_due_age_seconds", "How long each account's "
                               "longest-waiting due message has been due.", labels=["account"])
    for phone, due_at in sorted(gauges.oldest_by_account.items()):
        oldest.add_metric([mask_phone(phone)], _age(due_at, gauges.at))
    return [depth, oldest]


def _age(since: datetime | None, now: datetime) -> float:
    return 0.0 if since is None else max(timedelta(0), now - since).total_seconds()
