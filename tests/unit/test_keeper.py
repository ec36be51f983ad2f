"""Which accounts run, as a pure state machine: a table of cases per event, and a hypothesis
state machine that drives random events through a model of the supervisor around the keeper
and checks the invariants after every step."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from actors.keeper import (
    AccountKeeper,
    HandBack,
    KeeperCommand,
    Log,
    Phase,
    Place,
    ReadWork,
    Release,
    Settle,
    Start,
    SuspectDeadline,
    UnexpectedEvent,
    Unroute,
    WakeAt,
)
from actors.privacy import mask_phone
from postroom_common.buckets import bucket_of

T0 = datetime(2030, 1, 1, tzinfo=UTC)
A, B, C = "+15550001", "+15550002", "+15550003"
PERIOD = 10.0


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass(frozen=True)
class Ref:
    """An incarnation, as the keeper sees one."""

    actor_urn: str


class Shell:
    """Carries out a keeper's commands as the supervisor does, the starts at once."""

    def __init__(self, keeper: AccountKeeper) -> None:
        self.keeper = keeper
        self.urns = itertools.count(1)
        self.running: dict[str, Ref] = {}  # the latest incarnation started, by phone

    def run(self, commands: list[KeeperCommand]) -> list[KeeperCommand]:
        """The commands, and those the starts among them led to, in order."""
        done: list[KeeperCommand] = []
        for command in commands:
            done.append(command)
            if isinstance(command, Start):
                ref = self.running[command.phone] = Ref(f"urn:{next(self.urns)}")
                done += self.run(self.keeper.started(command.phone, ref))
        return done

    def urn(self, phone: str) -> str:
        return self.running[phone].actor_urn


def booted(*due_now: str, suspects: tuple[tuple[int, str], ...] = (), max_restarts: int = 3
           ) -> tuple[AccountKeeper, Shell]:
    keeper = AccountKeeper(max_restarts=max_restarts, restart_period=PERIOD, suspect_timeout=120.0)
    shell = Shell(keeper)
    shell.run(keeper.boot([(phone, t(0)) for phone in due_now], list(suspects), t(0)))
    return keeper, shell


def events(commands: list[KeeperCommand]) -> list[str]:
    return [c.event for c in commands if isinstance(c, Log)]


def without_logs(commands: list[KeeperCommand]) -> list[KeeperCommand]:
    return [c for c in commands if not isinstance(c, Log)]


# -- boot ----------------------------------------------------------------------------------------


def test_boot_starts_the_accounts_due_and_puts_the_others_to_sleep() -> None:
    keeper = AccountKeeper(3, PERIOD, 120.0)
    commands = Shell(keeper).run(keeper.boot([(A, t(0)), (B, t(60)), (C, t(30))], [], t(0)))
    assert commands == [Start(A), WakeAt(t(30))]
    assert keeper.phase is Phase.RUNNING and keeper.place(A) is Place.RUNNING
    assert keeper.sleeping == {B: t(60), C: t(30)}


def test_boot_with_suspects_runs_the_first_one_alone() -> None:
    keeper = AccountKeeper(3, PERIOD, 120.0)
    shell = Shell(keeper)
    commands = shell.run(keeper.boot([(A, t(0)), (B, t(0))], [(7, B), (9, C)], t(0)))
    assert events(commands) == ["quarantine.started", "quarantine.sending_alone"]
    assert without_logs(commands) == [Start(B, watch=7), SuspectDeadline(B, shell.urn(B), 120.0)]
    assert keeper.phase is Phase.SUSPECTS


@pytest.mark.parametrize("event", [
    lambda k: k.boot([], [], t(0)),  # twice
    lambda k: k.work_read([], t(0)),  # no read was asked for
    lambda k: k.started(A, Ref("urn:x")),  # no start was asked for
    lambda k: k.idle(B, "urn:x", None),  # not running
])
def test_an_event_the_state_does_not_allow_is_an_error(event: Any) -> None:
    keeper, _ = booted(A)
    with pytest.raises(UnexpectedEvent):
        event(keeper)


def test_nothing_but_boot_before_boot() -> None:
    keeper = AccountKeeper(3, PERIOD, 120.0)
    for event in (lambda: keeper.work_found([(A, t(0))], t(0)), lambda: keeper.wake(t(0)),
                  lambda: keeper.crashed(A, "urn:1", "E", False, 0.0)):
        with pytest.raises(UnexpectedEvent):
            event()


# -- work found --------------------------------------------------------------------------------


@pytest.mark.parametrize(("setup", "due", "expected"), [
    (lambda k, s: None, 0, [Start(B)]),  # stopped, due: started
    (lambda k, s: None, 30, [WakeAt(t(30))]),  # stopped, later: asleep until then
    (lambda k, s: s.run(k.work_found([(B, t(20))], t(0))), 30, []),  # asleep earlier already
    (lambda k, s: s.run(k.work_found([(B, t(40))], t(0))), 30, [WakeAt(t(30))]),  # earlier now
    (lambda k, s: s.run(k.work_found([(B, t(0))], t(0))), 0, []),  # running: the shell routed it
    (lambda k, s: s.run(k.stop()), 0, []),  # stopping: nothing starts
])
def test_work_found(setup: Any, due: float, expected: list[KeeperCommand]) -> None:
    keeper, shell = booted(A)
    setup(keeper, shell)
    assert shell.run(keeper.work_found([(B, t(due))], t(0))) == expected


def test_work_for_a_crashed_or_parked_account_starts_nothing() -> None:
    keeper, shell = booted(A, B, max_restarts=0)
    shell.run(keeper.crashed(A, shell.urn(A), "E", True, 0.0))  # giving back
    shell.run(keeper.crashed(B, shell.urn(B), "E", False, 0.0))  # parked at once
    assert (keeper.place(A), keeper.place(B)) == (Place.CRASHED, Place.PARKED)
    assert shell.run(keeper.work_found([(A, t(0)), (B, t(0))], t(0))) == []


def test_work_while_a_suspect_is_sent_alone_waits_for_the_read_after_it() -> None:
    keeper, shell = booted(suspects=((7, A),))
    assert shell.run(keeper.work_found([(B, t(0))], t(0))) == []
    commands = shell.run(keeper.suspect_settled(A, shell.urn(A)))
    assert without_logs(commands) == [Release(A, shell.running[A]), ReadWork()]
    assert keeper.phase is Phase.READING
    assert shell.run(keeper.work_found([(C, t(0))], t(0))) == [Start(C)]  # the read may miss it
    assert shell.run(keeper.work_read([(B, t(0)), (A, t(50))], t(0))) == [Start(B), WakeAt(t(50))]
    assert keeper.phase is Phase.RUNNING


# -- crashes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("crashes", "expected_place", "expected"), [
    # (seconds of each crash, all reported holding nothing)
    ([0.0], Place.RUNNING, ["account.restarted"]),
    ([0.0, 1.0, 2.0], Place.RUNNING, ["account.restarted"]),  # the third within the period
    ([0.0, 1.0, 2.0, 3.0], Place.PARKED, ["account.parked"]),  # one more parks it
    ([0.0, 11.0, 22.0, 33.0], Place.RUNNING, ["account.restarted"]),  # spread out: restarted
])
def test_restart_intensity(crashes: list[float], expected_place: Place, expected: list[str]) -> None:
    keeper, shell = booted(A)
    for mono in crashes:
        urn = shell.urn(A)
        commands = shell.run(keeper.crashed(A, urn, "E", False, mono))
    assert keeper.place(A) is expected_place and events(commands) == expected
    if expected_place is Place.PARKED:
        assert without_logs(commands) == [Unroute(A, urn), Settle(A)]
    else:
        assert without_logs(commands) == [Unroute(A, urn), Start(A, recover=True)]


def test_a_crash_still_giving_back_is_restarted_once_released() -> None:
    keeper, shell = booted(A)
    crashed = shell.urn(A)
    assert shell.run(keeper.crashed(A, crashed, "E", True, 0.0)) == [Unroute(A, crashed)]
    assert keeper.place(A) is Place.CRASHED and keeper.giving_back() == [crashed]
    assert shell.run(keeper.wanted(A)) == []  # no second incarnation while it gives back
    commands = shell.run(keeper.released(A, crashed, 1.0))
    assert without_logs(commands) == [Start(A, recover=True)] and events(commands) == ["account.restarted"]
    assert keeper.place(A) is Place.RUNNING and keeper.giving_back() == []


@pytest.mark.parametrize("event", [
    lambda k, urn: k.crashed(A, "urn:old", "E", False, 0.0),
    lambda k, urn: k.crashed(A, "urn:old", "E", True, 0.0),
    lambda k, urn: k.released(A, "urn:old", 0.0),
    lambda k, urn: k.suspect_settled(A, urn),  # no suspect is sent alone
    lambda k, urn: k.crashed(B, "urn:old", "E", False, 0.0),  # not running
])
def test_a_report_about_another_incarnation_changes_nothing(event: Any) -> None:
    keeper, shell = booted(A)
    assert shell.run(event(keeper, shell.urn(A))) == []
    assert keeper.place(A) is Place.RUNNING


def test_a_suspect_that_crashes_its_account_is_settled_and_the_next_one_goes() -> None:
    keeper, shell = booted(suspects=((7, A), (8, B)))
    urn = shell.urn(A)
    commands = shell.run(keeper.crashed(A, urn, "E", False, 0.0))
    assert events(commands) == ["account.crashed_alone", "quarantine.sending_alone"]
    assert without_logs(commands) == [Unroute(A, urn), Settle(A), Start(B, watch=8),
                                      SuspectDeadline(B, shell.urn(B), 120.0)]
    assert keeper.place(A) is None


def test_a_suspects_deadline_while_its_crashed_account_gives_back_waits_for_the_release() -> None:
    keeper, shell = booted(suspects=((7, A), (8, B)))
    urn = shell.urn(A)
    shell.run(keeper.crashed(A, urn, "E", True, 0.0))
    assert shell.run(keeper.suspect_settled(A, urn)) == []  # the deadline: it still gives back
    commands = shell.run(keeper.released(A, urn, 1.0))
    assert events(commands) == ["account.crashed_alone", "quarantine.sending_alone"]
    assert Settle(A) in commands and Start(B, watch=8) in commands


# -- idle, resume, stop ------------------------------------------------------------------------------


@pytest.mark.parametrize(("wake", "expected_wake"), [(None, []), (45.0, [WakeAt(t(45))])])
def test_an_idle_account_is_released_and_sleeps_until_its_next_work(
        wake: float | None, expected_wake: list[KeeperCommand]) -> None:
    keeper, shell = booted(A)
    ref = shell.running[A]
    commands = shell.run(keeper.idle(A, ref.actor_urn, None if wake is None else t(wake)))
    assert commands == [Release(A, ref), *expected_wake] and keeper.place(A) is None
    assert shell.run(keeper.released(A, ref.actor_urn, 0.0)) == []  # the end of that release
    assert shell.run(keeper.work_found([(A, t(0))], t(0))) == [Start(A)]


def test_an_account_stopped_without_being_told_is_forgotten() -> None:
    keeper, shell = booted(A)
    urn = shell.urn(A)
    assert shell.run(keeper.released(A, urn, 0.0)) == [Unroute(A, urn)] and keeper.place(A) is None


def test_the_sleepers_wake_when_due() -> None:
    keeper, shell = booted()
    shell.run(keeper.work_found([(A, t(10)), (B, t(20))], t(0)))
    assert shell.run(keeper.wake(t(5))) == [WakeAt(t(10))]  # early: nothing due yet
    assert shell.run(keeper.wake(t(10))) == [Start(A), WakeAt(t(20))]
    assert shell.run(keeper.wake(t(25))) == [Start(B)] and keeper.sleeping == {}


def test_resume_starts_a_parked_account_again_and_forgets_its_crashes() -> None:
    keeper, shell = booted(A, max_restarts=0)
    shell.run(keeper.crashed(A, shell.urn(A), "E", False, 0.0))
    assert keeper.parked == [A] and shell.run(keeper.resume(B)) == []
    commands = shell.run(keeper.resume(A))
    assert without_logs(commands) == [Start(A, recover=True)] and events(commands) == ["account.resumed"]
    assert keeper.parked == [] and keeper.kept == 1


def test_stop_releases_every_running_account_and_starts_nothing_after() -> None:
    keeper, shell = booted(A, B)
    shell.run(keeper.crashed(B, shell.urn(B), "E", True, 0.0))
    running = shell.running[A]
    assert shell.run(keeper.stop()) == [Release(A, running)]
    assert keeper.giving_back() == [shell.urn(B)]
    assert shell.run(keeper.released(B, shell.urn(B), 1.0)) == []  # not restarted
    assert shell.run(keeper.work_found([(C, t(0))], t(0))) == [] and shell.run(keeper.stop()) == []


# -- the state machine -----------------------------------------------------------------------------

PHONES = [A, B, C]
MASKED = {mask_phone(phone): phone for phone in PHONES}


class KeeperWorld(RuleBasedStateMachine):
    """The supervisor around an AccountKeeper: its account actors, timers and the database's
    work, each a few fields."""

    def __init__(self) -> None:
        super().__init__()
        self.keeper = AccountKeeper(max_restarts=2, restart_period=PERIOD, suspect_timeout=5.0)
        self.now = 0.0
        self.urns = itertools.count(1)
        self.running: dict[str, str] = {}  # phone -> its incarnation not told to release
        self.giving_back: dict[str, str] = {}  # urn -> phone, crashed and giving back
        self.releasing: dict[str, str] = {}  # urn -> phone, told to release
        self.work: dict[str, float] = {}  # phone -> earliest due of work no incarnation holds
        self.ends: dict[str, list[float]] = {}  # phone -> when each crash ended (restart intensity)
        self.parked: set[str] = set()
        self.timer: datetime | None = None
        self.deadline: tuple[str, str] | None = None
        self.reading = False
        self.stopped = False

    def run(self, commands: list[KeeperCommand]) -> None:
        for command in commands:
            match command:
                case Start(phone, recover, _):
                    self.started(phone, recover)
                case Release(phone, incarnation):
                    assert self.running.pop(phone, None) == incarnation.actor_urn
                    self.releasing[incarnation.actor_urn] = phone
                case Unroute(phone, urn):
                    assert self.running.pop(phone, None) == urn
                case WakeAt(at):
                    self.timer = at
                case SuspectDeadline(phone, urn, _):
                    self.deadline = (phone, urn)
                case ReadWork():
                    self.reading = True
                case Log(event="account.parked", fields=fields):
                    phone = MASKED[fields["account"]]
                    assert self.crashes_within(phone) > self.keeper.max_restarts, "parked too soon"
                    self.parked.add(phone)

    def started(self, phone: str, recover: bool) -> None:
        assert not self.stopped, "a start while stopping"
        assert phone not in self.running, "two incarnations of one account"
        assert phone not in self.giving_back.values(), "a start while the crashed one gives back"
        assert phone not in self.parked, "a parked account started"
        urn = f"urn:{next(self.urns)}"
        self.running[phone] = urn
        self.work.pop(phone, None)  # its window reads what the database has
        if recover:
            assert self.crashes_within(phone) <= self.keeper.max_restarts, "restarted past the intensity"
        self.run(self.keeper.started(phone, Ref(urn)))

    def crashes_within(self, phone: str) -> int:
        return sum(1 for end in self.ends.get(phone, []) if self.now - end <= PERIOD)

    def crash_ended(self, phone: str) -> None:
        """What it held is given back: its work is the database's again."""
        self.work[phone] = min(self.work.get(phone, self.now), self.now)
        if self.keeper.phase is not Phase.SUSPECTS:
            self.ends.setdefault(phone, []).append(self.now)

    # -- rules --------------------------------------------------------------------------------------

    @initialize(due=st.lists(st.tuples(st.sampled_from(PHONES), st.sampled_from([0.0, 5.0, 30.0])),
                             max_size=3),
                suspects=st.lists(st.sampled_from(PHONES), max_size=2, unique=True))
    def boot(self, due: list[tuple[str, float]], suspects: list[str]) -> None:
        for phone, ahead in due:
            self.work[phone] = min(self.work.get(phone, ahead), ahead)
        self.run(self.keeper.boot(list(self.work_due()), list(enumerate(suspects)), t(0)))

    def work_due(self) -> list[tuple[str, datetime]]:
        return [(phone, t(due)) for phone, due in self.work.items()]

    @rule(phone=st.sampled_from(PHONES), ahead=st.sampled_from([0.0, 0.0, 5.0, 30.0]))
    def enqueue(self, phone: str, ahead: float) -> None:
        if phone in self.running:
            return  # the shell routes it to the running incarnation
        self.work[phone] = min(self.work.get(phone, self.now + ahead), self.now + ahead)
        self.run(self.keeper.work_found([(phone, t(self.now + ahead))], t(self.now)))

    @rule(seconds=st.sampled_from([1.0, 4.0, 11.0, 30.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        if self.timer is not None and self.timer <= t(self.now):
            self.timer = None
            self.run(self.keeper.wake(t(self.now)))

    @rule(phone=st.sampled_from(PHONES), releasing=st.booleans())
    def crash(self, phone: str, releasing: bool) -> None:
        urn = self.running.get(phone)
        if urn is None:
            return
        if releasing:
            self.giving_back[urn] = phone
        else:
            self.crash_ended(phone)
        self.run(self.keeper.crashed(phone, urn, "E", releasing, self.now))

    @precondition(lambda self: self.giving_back)
    @rule(data=st.data())
    def given_back(self, data: st.DataObject) -> None:
        urn = data.draw(st.sampled_from(sorted(self.giving_back)))
        phone = self.giving_back.pop(urn)
        if self.keeper.phase is not Phase.STOPPING:
            self.crash_ended(phone)
        self.run(self.keeper.released(phone, urn, self.now))

    @rule(phone=st.sampled_from(PHONES), wake=st.sampled_from([None, 5.0, 30.0]))
    def idle(self, phone: str, wake: float | None) -> None:
        urn = self.running.get(phone)
        if urn is None:
            return
        if wake is not None:
            self.work[phone] = min(self.work.get(phone, self.now + wake), self.now + wake)
        self.run(self.keeper.idle(phone, urn, None if wake is None else t(self.now + wake)))

    @precondition(lambda self: self.releasing)
    @rule(data=st.data())
    def release_ends(self, data: st.DataObject) -> None:
        urn = data.draw(st.sampled_from(sorted(self.releasing)))
        assert self.keeper.released(self.releasing.pop(urn), urn, self.now) == []

    @rule(phone=st.sampled_from(PHONES))
    def stale_reports(self, phone: str) -> None:
        for event in (lambda: self.keeper.crashed(phone, "urn:stale", "E", False, self.now),
                      lambda: self.keeper.crashed(phone, "urn:stale", "E", True, self.now),
                      lambda: self.keeper.released(phone, "urn:stale", self.now),
                      lambda: self.keeper.suspect_settled(phone, "urn:stale")):
            assert event() == []

    @precondition(lambda self: self.deadline is not None)
    @rule()
    def suspect_settles(self) -> None:
        assert self.deadline is not None
        (phone, urn), self.deadline = self.deadline, None
        self.run(self.keeper.suspect_settled(phone, urn))

    @precondition(lambda self: self.reading)
    @rule()
    def work_read(self) -> None:
        self.reading = False
        self.run(self.keeper.work_read(self.work_due(), t(self.now)))

    @rule(phone=st.sampled_from(PHONES))
    def resume(self, phone: str) -> None:
        was_parked = self.keeper.place(phone) is Place.PARKED and not self.stopped
        if was_parked:
            self.parked.discard(phone)
            self.ends.pop(phone, None)
        commands = self.keeper.resume(phone)
        assert was_parked == any(isinstance(c, Start) for c in commands)
        self.run(commands)

    @precondition(lambda self: not self.stopped)
    @rule()
    def stop(self) -> None:
        self.stopped = True
        self.run(self.keeper.stop())

    # -- invariants -----------------------------------------------------------------------------------

    @invariant()
    def the_keeper_agrees_on_who_runs(self) -> None:
        for phone in PHONES:
            place = self.keeper.place(phone)
            assert (place is Place.RUNNING) == (phone in self.running), (phone, place)
            assert (place is Place.CRASHED) == (phone in self.giving_back.values()), (phone, place)
            assert (place is Place.PARKED) == (phone in self.parked), (phone, place)

    @invariant()
    def a_suspect_runs_alone(self) -> None:
        if self.keeper.phase is Phase.SUSPECTS:
            assert len(self.running) <= 1

    @invariant()
    def no_work_is_forgotten(self) -> None:
        if self.keeper.phase in (Phase.SUSPECTS, Phase.READING, Phase.STOPPING):
            return  # the read after the suspects brings it back; a stop leaves it to the next start
        for phone, due in self.work.items():
            if self.keeper.place(phone) is not None:
                continue  # running, restarted once it has given back, or parked until resumed
            asleep = self.keeper.sleeping.get(phone)
            assert asleep is not None and asleep <= t(due), f"{phone}'s work at {due} is forgotten"

    @invariant()
    def the_timer_wakes_the_first_sleeper(self) -> None:
        sleeping = self.keeper.sleeping
        if sleeping:
            assert self.timer is not None and self.timer <= min(sleeping.values())


KeeperWorld.TestCase.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
test_keeper_world = KeeperWorld.TestCase


# -- buckets (a node of several) ------------------------------------------------------------------


def node_keeper(*held_phones: str) -> tuple[AccountKeeper, Shell]:
    """A node's keeper, booted holding no bucket, then the buckets of `held_phones`."""
    keeper = AccountKeeper(3, PERIOD, 120.0, every_bucket=False)
    shell = Shell(keeper)
    shell.run(keeper.boot([], [], t(0)))
    shell.run(keeper.buckets_won({bucket_of(p) for p in held_phones}, [], t(0)))
    return keeper, shell


def test_a_node_starts_only_the_accounts_of_the_buckets_it_holds() -> None:
    assert len({bucket_of(A), bucket_of(B), bucket_of(C)}) == 3
    keeper, shell = node_keeper(A)
    assert shell.run(keeper.work_found([(A, t(0)), (B, t(0)), (C, t(30))], t(0))) == [Start(A)]
    assert keeper.sleeping == {} and keeper.wanted(B) == []
    commands = shell.run(keeper.buckets_won({bucket_of(B), bucket_of(C)}, [(B, t(0)), (C, t(30))], t(0)))
    assert commands == [Start(B), WakeAt(t(30))]


def test_handing_over_releases_the_accounts_and_hands_back_once_the_last_has_released() -> None:
    keeper, shell = node_keeper(A, B)
    shell.run(keeper.work_found([(A, t(0)), (B, t(0))], t(0)))
    a_urn = shell.urn(A)
    commands = keeper.hand_over({bucket_of(A)})
    assert without_logs(commands) == [Release(A, shell.running[A])]
    assert keeper.place(A) is Place.HANDING and not keeper.holds(A)
    assert keeper.work_found([(A, t(0))], t(0)) == [] and keeper.hand_over({bucket_of(A)}) == []
    assert keeper.released(A, a_urn, 1.0) == [HandBack(frozenset({bucket_of(A)}))]
    assert keeper.place(A) is None and keeper.buckets == {bucket_of(B)}
    assert keeper.place(B) is Place.RUNNING  # another bucket's account runs on


def test_a_bucket_without_running_accounts_is_handed_back_at_once_its_sleepers_and_parked_forgotten() -> None:
    keeper, shell = node_keeper(A, B)
    shell.run(keeper.work_found([(A, t(30))], t(0)))
    for n in range(4):  # B crashes past the restart intensity: parked
        shell.run(keeper.work_found([(B, t(0))], t(0)))
        shell.run(keeper.crashed(B, shell.urn(B), "E", False, float(n)))
    assert keeper.place(B) is Place.PARKED and keeper.sleeping == {A: t(30)}
    commands = keeper.hand_over({bucket_of(A), bucket_of(B)})
    assert without_logs(commands) == [HandBack(frozenset({bucket_of(A), bucket_of(B)}))]
    assert keeper.sleeping == {} and keeper.place(B) is None and keeper.kept == 0


def test_an_account_crashing_while_handed_over_is_settled_and_not_started_again() -> None:
    keeper, shell = node_keeper(A)
    shell.run(keeper.work_found([(A, t(0))], t(0)))
    urn = shell.urn(A)
    keeper.hand_over({bucket_of(A)})
    assert keeper.crashed(A, urn, "E", False, 1.0) == [Settle(A), HandBack(frozenset({bucket_of(A)}))]
    keeper, shell = node_keeper(A)
    shell.run(keeper.work_found([(A, t(0))], t(0)))
    shell.run(keeper.crashed(A, shell.urn(A), "E", True, 1.0))  # crashed, giving back
    assert without_logs(keeper.hand_over({bucket_of(A)})) == []  # waits for it
    assert keeper.released(A, shell.urn(A), 2.0) == [Settle(A), HandBack(frozenset({bucket_of(A)}))]


def test_a_lost_lease_releases_and_forgets_the_accounts_of_the_buckets_lost() -> None:
    keeper, shell = node_keeper(A, B)
    shell.run(keeper.work_found([(A, t(0)), (B, t(0)), (C, t(0))], t(0)))
    commands = keeper.buckets_lost({bucket_of(A), bucket_of(C)})
    assert commands == [Release(A, shell.running[A])]
    assert keeper.place(A) is Place.HANDING and keeper.place(B) is Place.RUNNING
    assert keeper.wanted(A) == [] and keeper.buckets == {bucket_of(B)}
    assert keeper.released(A, shell.urn(A), 1.0) == [] and keeper.place(A) is None


def test_a_bucket_won_back_while_its_account_releases_starts_it_once_released() -> None:
    """Lost, then won back before the released incarnation has finished: no second one starts
    meanwhile; once it has released it starts again, settling what it left."""
    keeper, shell = node_keeper(A)
    shell.run(keeper.work_found([(A, t(0))], t(0)))
    old = shell.urn(A)
    keeper.buckets_lost({bucket_of(A)})
    assert shell.run(keeper.buckets_won({bucket_of(A)}, [(A, t(0))], t(0))) == []
    restarted = shell.run(keeper.released(A, old, 1.0))
    assert restarted == [Start(A, recover=True)] and keeper.place(A) is Place.RUNNING


def test_the_one_node_of_a_database_holds_every_bucket() -> None:
    keeper, shell = booted(A)
    assert keeper.buckets is None and keeper.holds(B)
    assert shell.run(keeper.work_found([(B, t(0))], t(0))) == [Start(B)]


def test_a_stop_during_a_handover_waits_for_the_accounts_being_handed_over_too() -> None:
    keeper, shell = node_keeper(A, B)
    shell.run(keeper.work_found([(A, t(0)), (B, t(0))], t(0)))
    keeper.hand_over({bucket_of(A)})
    releases = [c for c in keeper.stop() if isinstance(c, Release)]
    assert [c.phone for c in releases] == [B]
    assert keeper.giving_back() == [shell.urn(A)]  # the stop waits for it as for B


class NodeKeeperWorld(RuleBasedStateMachine):
    """A node's keeper under random bucket moves, work, crashes and releases: an account runs
    only while its bucket is held and not being handed over, and a bucket goes back only once
    none of its accounts holds anything."""

    def __init__(self) -> None:
        super().__init__()
        self.keeper = AccountKeeper(max_restarts=2, restart_period=PERIOD, suspect_timeout=5.0,
                                    every_bucket=False)
        self.keeper.boot([], [], t(0))
        self.urns = itertools.count(1)
        self.alive: dict[str, str] = {}  # phone -> urn of an incarnation that holds something
        self.told: set[str] = set()  # urns told to release
        self.crashed_giving_back: set[str] = set()
        self.handed_back: set[int] = set()
        self.now = 0.0

    def run(self, commands: list[KeeperCommand]) -> None:
        for command in commands:
            match command:
                case Start(phone):
                    assert self.keeper.holds(phone), "an account of a bucket not held started"
                    assert phone not in self.alive, "two incarnations of one account"
                    urn = f"urn:{next(self.urns)}"
                    self.alive[phone] = urn
                    self.run(self.keeper.started(phone, Ref(urn)))
                case Release(phone, incarnation):
                    self.told.add(incarnation.actor_urn)
                case HandBack(buckets):
                    for phone in self.alive:
                        assert bucket_of(phone) not in buckets, "handed back while an account holds work"
                    self.handed_back |= buckets

    @rule(phones=st.lists(st.sampled_from(PHONES), max_size=3, unique=True))
    def won(self, phones: list[str]) -> None:
        self.run(self.keeper.buckets_won({bucket_of(p) for p in phones}, [], t(self.now)))

    @rule(phone=st.sampled_from(PHONES))
    def work(self, phone: str) -> None:
        self.run(self.keeper.work_found([(phone, t(self.now))], t(self.now)))

    @rule(phones=st.lists(st.sampled_from(PHONES), min_size=1, max_size=3, unique=True))
    def hand_over(self, phones: list[str]) -> None:
        self.run(self.keeper.hand_over({bucket_of(p) for p in phones}))

    @rule(phones=st.lists(st.sampled_from(PHONES), min_size=1, max_size=3, unique=True))
    def lose(self, phones: list[str]) -> None:
        self.run(self.keeper.buckets_lost({bucket_of(p) for p in phones}))

    @rule(phone=st.sampled_from(PHONES), releasing=st.booleans())
    def crash(self, phone: str, releasing: bool) -> None:
        urn = self.alive.get(phone)
        if urn is None or urn in self.crashed_giving_back:
            return
        if releasing:
            self.crashed_giving_back.add(urn)
        else:
            del self.alive[phone]
        self.now += 1
        self.run(self.keeper.crashed(phone, urn, "E", releasing, self.now))

    @rule(phone=st.sampled_from(PHONES))
    def released(self, phone: str) -> None:
        urn = self.alive.get(phone)
        if urn is None or (urn not in self.told and urn not in self.crashed_giving_back):
            return
        del self.alive[phone]
        self.crashed_giving_back.discard(urn)
        self.now += 1
        self.run(self.keeper.released(phone, urn, self.now))

    @invariant()
    def running_accounts_are_of_held_buckets(self) -> None:
        held = self.keeper.buckets or set()
        for phone in PHONES:
            if self.keeper.place(phone) in (Place.STARTING, Place.RUNNING):
                assert bucket_of(phone) in held and self.keeper.holds(phone), phone


NodeKeeperWorld.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_node_keeper_world = NodeKeeperWorld.TestCase
