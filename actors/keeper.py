"""Which accounts run in this process, as a pure state machine: events in, commands out.

The process-level counterpart of `AccountMachine`: no threads, no clock, no I/O. The
supervisor delivers events (work found for an account that does not run, an account
started, crashed, idle, released, a suspect settled, the boot's work read, a timer) with
the time, and carries out the commands that come back: start an account, release one,
stop routing rows to one, settle what a crashed account left in flight, wake the sleepers
at an instant, give a suspect up after a while, read the accounts with work, log.

Everything "which accounts run here" decides lives here: an account starts when work is
due for it and sleeps until its work falls due otherwise; a crashed one is started again
(restart intensity: more than `max_restarts` crashes within `restart_period` park it)
only once it has given back what it held (`AccountReleased` after `AccountCrashed` with
`releasing`); an idle one is released; at a boot after repeated crashes, each suspect's
account runs alone, one after the other, before every other account starts.

Phases of the process (`Phase`), read by every event:
    BOOTING   before `boot`
    SUSPECTS  suspects sent alone: only the quarantined account runs
    READING   the suspects are done with; the accounts with work are being read again
    RUNNING   every account with work runs, or sleeps until its work is due
    STOPPING  every account is released; nothing starts

Places of an account (`Place`); an account in none is stopped (perhaps asleep):
    STARTING  its start was commanded; `started` follows in the same turn
    RUNNING   an incarnation runs: rows are routed to it
    CRASHED   its incarnation crashed and gives back what it held, by mail
    PARKED    it crashed too often: nothing starts it until it is resumed
    HANDING   released because its bucket goes to another node: it finishes its send in flight

Buckets (`postroom_common.buckets`): an account runs here only while its bucket is held. The
one node of a database (SQLite, an exclusive owner) holds every bucket from the start; a node
of several begins with none and is told which it won, which it must hand over (its accounts
release, and once the last has, `HandBack` lets the bucket go) and which it lost (its lease
expired: its accounts are released, their writes fenced already).

An event the phase or the place does not allow raises `UnexpectedEvent`; a report about
an incarnation that is no longer the account's (stale) is ignored.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from actors.privacy import mask_phone
from postroom_common.buckets import bucket_of

__all__ = [
    "AccountKeeper",
    "HandBack",
    "Incarnation",
    "KeeperCommand",
    "Log",
    "Phase",
    "Place",
    "ReadWork",
    "Release",
    "Settle",
    "Start",
    "SuspectDeadline",
    "UnexpectedEvent",
    "Unroute",
    "WakeAt",
]


class UnexpectedEvent(RuntimeError):
    """An event the keeper's phase, or the account's place, does not allow (a bug of its shell)."""


class Incarnation(Protocol):
    """A running account actor, as the keeper sees it: which one (its reports name it)."""

    @property
    def actor_urn(self) -> str: ...


class Phase(enum.Enum):
    """Where the process is (see the module's docstring)."""

    BOOTING = "booting"
    SUSPECTS = "suspects"
    READING = "reading"
    RUNNING = "running"
    STOPPING = "stopping"


class Place(enum.Enum):
    """Where an account is (see the module's docstring)."""

    STARTING = "starting"
    RUNNING = "running"
    CRASHED = "crashed"
    PARKED = "parked"
    HANDING = "handing"


# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Start an account actor; report it with `started`."""

    phone: str
    recover: bool = False
    """Settle first what an earlier incarnation left in flight."""
    watch: int | None = None
    """The suspect it sends alone."""


@dataclass(frozen=True, slots=True)
class Release:
    """Route no more rows to this incarnation and tell it to release (`AccountReleased` follows)."""

    phone: str
    incarnation: Incarnation


@dataclass(frozen=True, slots=True)
class Unroute:
    """Route no more rows to this incarnation (it crashed, or stopped)."""

    phone: str
    urn: str


@dataclass(frozen=True, slots=True)
class Settle:
    """Settle, by the delivery policy, what the account left in flight (it will not run soon)."""

    phone: str


@dataclass(frozen=True, slots=True)
class WakeAt:
    """Deliver `wake` at this instant of the wall clock (one timer: a later one replaces it)."""

    at: datetime


@dataclass(frozen=True, slots=True)
class SuspectDeadline:
    """Deliver `suspect_settled(phone, urn)` after `seconds`, if it is not settled before."""

    phone: str
    urn: str
    seconds: float


@dataclass(frozen=True, slots=True)
class HandBack:
    """Every account of these buckets has released: let them go to the node they are placed on."""

    buckets: frozenset[int]


@dataclass(frozen=True, slots=True)
class ReadWork:
    """Read which accounts have work, and when each is due; answer with `work_read`."""


@dataclass(frozen=True, slots=True)
class Log:
    """A log event of the supervisor's (phones masked)."""

    level: str
    event: str
    fields: dict[str, Any]


#: The log event of an account started again after a crash (`Metrics` counts them).
RESTARTED = "account.restarted"

KeeperCommand = Start | Release | Unroute | Settle | WakeAt | SuspectDeadline | ReadWork | HandBack | Log


# -- the keeper ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Account:
    place: Place
    incarnation: Incarnation | None = None
    """RUNNING: the one running; CRASHED: the one giving back."""
    error: str | None = None
    """CRASHED: what it crashed with."""

    def runs(self, urn: str) -> bool:
        return self.incarnation is not None and self.incarnation.actor_urn == urn


@dataclass(slots=True)
class _Sleepers:
    """Stopped accounts with work in the future: one entry each, at its earliest."""

    heap: list[tuple[datetime, str]] = field(default_factory=list)
    until: dict[str, datetime] = field(default_factory=dict)

    def add(self, phone: str, at: datetime) -> bool:
        """True if that is new (not already due to wake by then)."""
        known = self.until.get(phone)
        if known is not None and known <= at:
            return False
        self.until[phone] = at
        heapq.heappush(self.heap, (at, phone))
        return True

    def due(self, now: datetime) -> list[str]:
        phones = []
        while self.heap and self.heap[0][0] <= now:
            at, phone = heapq.heappop(self.heap)
            if self.until.get(phone) == at:
                del self.until[phone]
            phones.append(phone)
        return phones

    def next(self) -> list[KeeperCommand]:
        return [WakeAt(self.heap[0][0])] if self.heap else []

    def forget(self, which: Callable[[str], bool]) -> None:
        """Drop the sleepers `which` selects."""
        self.until = {phone: at for phone, at in self.until.items() if not which(phone)}
        self.heap = [(at, phone) for at, phone in self.heap if self.until.get(phone) == at]
        heapq.heapify(self.heap)


class AccountKeeper:
    """Which accounts run here (see the module's docstring)."""

    def __init__(self, max_restarts: int, restart_period: float, suspect_timeout: float, *,
                 every_bucket: bool = True) -> None:
        self.max_restarts = max_restarts
        self.restart_period = restart_period
        self.suspect_timeout = suspect_timeout
        self.phase = Phase.BOOTING
        self._held: set[int] | None = None if every_bucket else set()  # None: every bucket
        self._leaving: set[int] = set()  # held, being handed over: nothing of theirs starts
        self._accounts: dict[str, _Account] = {}
        self._restarts: dict[str, deque[float]] = {}
        self._sleepers = _Sleepers()
        self._suspects: deque[tuple[int, str]] = deque()
        self._quarantined: str | None = None

    # -- what the keeper tells about itself ----------------------------------------------------

    def place(self, phone: str) -> Place | None:
        """Where `phone` is; None: stopped."""
        account = self._accounts.get(phone)
        return None if account is None else account.place

    @property
    def parked(self) -> list[str]:
        return sorted(p for p, a in self._accounts.items() if a.place is Place.PARKED)

    @property
    def sleeping(self) -> dict[str, datetime]:
        """The stopped accounts with work in the future, and when each wakes."""
        return dict(self._sleepers.until)

    @property
    def kept(self) -> int:
        """Accounts it keeps an entry for (running, crashed, parked), sleepers and crash histories:
        none once every account has stopped."""
        return len(self._accounts) + len(self._sleepers.heap) + len(self._restarts)

    def holds(self, phone: str) -> bool:
        """Whether the account's bucket is held here and not being handed over."""
        bucket = bucket_of(phone)
        return (self._held is None or bucket in self._held) and bucket not in self._leaving

    @property
    def buckets(self) -> set[int] | None:
        """The buckets held (None: every one)."""
        return None if self._held is None else set(self._held)

    def giving_back(self) -> list[str]:
        """The urns of the incarnations still giving back what they held: crashed, or released
        as their bucket is handed over."""
        return [a.incarnation.actor_urn for a in self._accounts.values()
                if a.place in (Place.CRASHED, Place.HANDING) and a.incarnation is not None]

    # -- events -------------------------------------------------------------------------------

    def boot(self, work: Iterable[tuple[str, datetime]], suspects: Sequence[tuple[int, str]],
             now: datetime) -> list[KeeperCommand]:
        """Start: the suspects (message id, phone) alone first, if any; else the accounts with
        work due, the others asleep until theirs is."""
        self._expect(Phase.BOOTING)
        if not suspects:
            return self._run(work, now)
        self.phase = Phase.SUSPECTS
        self._suspects = deque(suspects)
        return [Log("warning", "quarantine.started", {"suspects": len(suspects)}), *self._next_suspect()]

    def started(self, phone: str, incarnation: Incarnation) -> list[KeeperCommand]:
        """The account whose start was commanded runs as `incarnation`."""
        account = self._accounts.get(phone)
        if account is None or account.place is not Place.STARTING:
            raise UnexpectedEvent(f"started while {None if account is None else account.place}")
        account.place, account.incarnation = Place.RUNNING, incarnation
        if phone == self._quarantined:
            return [SuspectDeadline(phone, incarnation.actor_urn, self.suspect_timeout)]
        return []

    def work_found(self, work: Iterable[tuple[str, datetime]], now: datetime) -> list[KeeperCommand]:
        """Accounts with work (each with its first due instant) that were not running when it
        was routed: each starts if its work is due, else sleeps until it is."""
        self._expect_started()
        commands: list[KeeperCommand] = []
        slept = False
        for phone, first_due in work:
            if not self.holds(phone):
                continue  # another node's: its owner learns of it from the database
            if first_due > now:  # scheduled work for a stopped account costs no actor until it is due
                slept = self._sleepers.add(phone, first_due) or slept
            else:
                commands += self.wanted(phone)
        return commands + self._sleepers.next() if slept else commands

    def wanted(self, phone: str) -> list[KeeperCommand]:
        """The account should run (work is due, its pause was lifted): start it unless it runs,
        is parked, is giving back after a crash, or another account runs alone."""
        self._expect_started()
        if phone in self._accounts or self.phase is Phase.STOPPING or not self.holds(phone):
            return []  # a crashed one's restart reads this work with its window
        if self.phase is Phase.SUSPECTS and phone != self._quarantined:
            return []  # a suspect is being sent alone; the boot after it reads this work back
        return self._start(phone)

    def crashed(self, phone: str, urn: str, error: str, releasing: bool, mono: float) -> list[KeeperCommand]:
        """An incarnation crashed; `releasing`: it still gives back what it held."""
        self._expect_started()
        account = self._accounts.get(phone)
        if account is not None and account.place is Place.HANDING and account.runs(urn) and not releasing:
            del self._accounts[phone]  # crashed while released, holding nothing
            return ([] if self.holds(phone) else [Settle(phone)]) + self._after_handing(phone)
        if account is None or account.place is not Place.RUNNING or not account.runs(urn):
            return []  # a report about an incarnation already replaced
        unroute: list[KeeperCommand] = [Unroute(phone, urn)]
        if releasing:  # started again once what it held is given back
            account.place, account.error = Place.CRASHED, error
            return unroute
        del self._accounts[phone]
        return unroute + self._after_crash(phone, error, mono)

    def released(self, phone: str, urn: str, mono: float) -> list[KeeperCommand]:
        """An incarnation released what it held and stopped."""
        self._expect_started()
        account = self._accounts.get(phone)
        if account is None or not account.runs(urn):
            return []  # released after `Release`: forgotten when it was told
        del self._accounts[phone]
        if account.place is Place.CRASHED:
            assert account.error is not None
            return self._after_crash(phone, account.error, mono)
        if account.place is Place.HANDING:
            return self._after_handing(phone)
        return [Unroute(phone, urn)]  # stopped without being told (every actor stopped at once)

    def idle(self, phone: str, urn: str, wake_at: datetime | None) -> list[KeeperCommand]:
        """A running incarnation had nothing to do, and nothing was routed to it since it said
        so (the shell's routing table tells, under the lock the writer routes with): release
        it; it wakes when its next work is due."""
        self._expect_started()
        account = self._accounts.get(phone)
        if account is None or account.place is not Place.RUNNING or not account.runs(urn):
            raise UnexpectedEvent(f"idle while {None if account is None else account.place}")
        del self._accounts[phone]
        assert account.incarnation is not None
        slept = wake_at is not None and self._sleepers.add(phone, wake_at)
        return [Release(phone, account.incarnation), *(self._sleepers.next() if slept else [])]

    def suspect_settled(self, phone: str, urn: str) -> list[KeeperCommand]:
        """The suspect sent alone is done with (recorded, not sendable now, or given up on)."""
        account = self._accounts.get(phone)
        if self.phase is not Phase.SUSPECTS or phone != self._quarantined or account is None \
                or account.place is not Place.RUNNING or not account.runs(urn):
            return []  # a late deadline, a report about an earlier suspect, or it crashed
        return self._next_suspect()

    def work_read(self, work: Iterable[tuple[str, datetime]], now: datetime) -> list[KeeperCommand]:
        """The accounts with work, read after the suspects were sent alone."""
        if self.phase is Phase.STOPPING:
            return []  # read as the stop began: the next start reads it again
        self._expect(Phase.READING)
        return self._run(work, now)

    def wake(self, now: datetime) -> list[KeeperCommand]:
        """The sleepers' timer fired: start the accounts whose work is due."""
        self._expect_started()
        commands: list[KeeperCommand] = []
        for phone in self._sleepers.due(now):
            commands += self.wanted(phone)
        return commands + self._sleepers.next()

    def resume(self, phone: str) -> list[KeeperCommand]:
        """A user resumed the account: unparked (started again, settling first), if it was."""
        self._expect_started()
        account = self._accounts.get(phone)
        if account is None or account.place is not Place.PARKED or self.phase is Phase.STOPPING:
            return []
        del self._accounts[phone]
        self._restarts.pop(phone, None)
        if not self.holds(phone):
            return []
        return [Log("info", "account.resumed", {"account": mask_phone(phone)}),
                *self._start(phone, recover=True)]

    def buckets_won(self, buckets: Iterable[int], work: Iterable[tuple[str, datetime]],
                    now: datetime) -> list[KeeperCommand]:
        """This node took buckets (their former owners' rows in flight are settled); `work`:
        their accounts with work, read after the take."""
        self._expect_started()
        won = set(buckets)
        if self._held is not None:
            self._held |= won
        self._leaving -= won
        return self.work_found(work, now)

    def hand_over(self, buckets: Iterable[int]) -> list[KeeperCommand]:
        """Buckets placed on another node: their accounts release (each finishes its send in
        flight) and nothing of theirs starts; `HandBack` once none is left."""
        self._expect_started()
        leaving = {b for b in buckets if self._held is None or b in self._held} - self._leaving
        if not leaving:
            return []
        self._leaving |= leaving
        commands: list[KeeperCommand] = [Log("info", "buckets.handing_over", {"buckets": sorted(leaving)})]
        commands += self._release_buckets(leaving)
        return commands + self._hand_back_empty()

    def _after_handing(self, phone: str) -> list[KeeperCommand]:
        """An account released as its bucket went has: the bucket goes back if it was the last
        one; if the bucket was won back meanwhile, it starts again (its work, if any, was read
        while it released), settling what it may have left."""
        if self.holds(phone) and self.phase is not Phase.STOPPING:
            return self._start(phone, recover=True)
        return self._hand_back_empty()

    def buckets_lost(self, buckets: Iterable[int]) -> list[KeeperCommand]:
        """Buckets no longer held (the lease expired, or another node took them): their accounts
        are released (their writes are fenced already; each is HANDING until it has released,
        so that a bucket won back meanwhile does not start a second one), parked ones forgotten."""
        lost = set(buckets)
        if self._held is not None:
            self._held -= lost
        self._leaving -= lost
        commands = self._release_buckets(lost)
        for phone, account in list(self._accounts.items()):
            if bucket_of(phone) in lost and account.place is Place.PARKED:
                del self._accounts[phone]
        return commands

    def _release_buckets(self, buckets: set[int]) -> list[KeeperCommand]:
        """Release the running accounts of `buckets`, HANDING until released; forget their
        sleepers and their restart histories."""
        commands: list[KeeperCommand] = []
        for phone, account in list(self._accounts.items()):
            if bucket_of(phone) not in buckets:
                continue
            if account.place is Place.RUNNING and account.incarnation is not None:
                commands.append(Release(phone, account.incarnation))
                account.place = Place.HANDING
        self._sleepers.forget(lambda phone: bucket_of(phone) in buckets)
        for phone in [p for p in self._restarts if bucket_of(p) in buckets]:
            del self._restarts[phone]
        return commands

    def _hand_back_empty(self) -> list[KeeperCommand]:
        """The buckets being handed over whose accounts have all released."""
        busy = {bucket_of(p) for p, a in self._accounts.items() if a.place is not Place.PARKED}
        done = frozenset(self._leaving - busy)
        if not done:
            return []
        self._leaving -= done
        if self._held is not None:
            self._held -= done
        for phone in [p for p, a in self._accounts.items() if bucket_of(p) in done]:
            del self._accounts[phone]  # parked: the next owner starts it afresh
        return [HandBack(done)]

    def stop(self) -> list[KeeperCommand]:
        """Stopping: release every running account; nothing starts from here on."""
        if self.phase is Phase.STOPPING:
            return []
        self.phase = Phase.STOPPING
        commands: list[KeeperCommand] = []
        for phone, account in list(self._accounts.items()):
            if account.place is Place.RUNNING and account.incarnation is not None:
                del self._accounts[phone]
                commands.append(Release(phone, account.incarnation))
        return commands

    # -- decisions ----------------------------------------------------------------------------------

    def _run(self, work: Iterable[tuple[str, datetime]], now: datetime) -> list[KeeperCommand]:
        """Every account with work runs, or sleeps until its work is due."""
        self.phase = Phase.RUNNING
        return self.work_found(work, now)

    def _start(self, phone: str, *, recover: bool = False, watch: int | None = None) -> list[KeeperCommand]:
        self._accounts[phone] = _Account(Place.STARTING)
        return [Start(phone, recover, watch)]

    def _after_crash(self, phone: str, error: str, mono: float) -> list[KeeperCommand]:
        """A crashed account holds nothing any more: go on with the suspects if it was sending
        one alone, else start it again, or park it if it crashes too often."""
        masked = mask_phone(phone)
        if phone == self._quarantined:
            # Sending its suspect alone crashed the actor: what it held is settled now, and the
            # boot that follows acquires the account again.
            self._quarantined = None
            return [Log("warning", "account.crashed_alone", {"account": masked, "error": error}),
                    Settle(phone), *self._next_suspect()]
        if self.phase is Phase.STOPPING:
            return []
        if not self.holds(phone):  # handed over or lost meanwhile: not started again here
            return [Settle(phone), *self._hand_back_empty()]
        history = self._restarts.setdefault(phone, deque())
        history.append(mono)
        while history and mono - history[0] > self.restart_period:
            history.popleft()
        if len(history) > self.max_restarts:
            self._accounts[phone] = _Account(Place.PARKED)
            return [Settle(phone),  # what the dead actor could not give back
                    Log("error", "account.parked", {"account": masked, "error": error,
                                                    "restarts": len(history), "period": self.restart_period})]
        return [Log("warning", RESTARTED, {"account": masked, "error": error}),
                *self._start(phone, recover=True)]  # acquiring settles what the dead one could not

    def _next_suspect(self) -> list[KeeperCommand]:
        """Release the account that sent the last suspect; start the next one's alone, or read
        who has work now (enqueued meanwhile: in the database)."""
        commands: list[KeeperCommand] = []
        if self._quarantined is not None:
            done = self._accounts.pop(self._quarantined, None)
            if done is not None and done.incarnation is not None:
                commands.append(Release(self._quarantined, done.incarnation))
            self._quarantined = None
        if self.phase is Phase.STOPPING:
            return commands
        if self._suspects:  # nothing is parked at boot: every suspect gets its turn
            message_id, phone = self._suspects.popleft()
            self._quarantined = phone
            return [*commands, Log("warning", "quarantine.sending_alone",
                                   {"message_id": message_id, "account": mask_phone(phone)}),
                    *self._start(phone, watch=message_id)]
        self.phase = Phase.READING
        return [*commands, Log("info", "quarantine.finished", {}), ReadWork()]

    def _expect(self, phase: Phase) -> None:
        if self.phase is not phase:
            raise UnexpectedEvent(f"expected while {phase.value}, not {self.phase.value}")

    def _expect_started(self) -> None:
        if self.phase is Phase.BOOTING:
            raise UnexpectedEvent("the keeper has not booted")
