"""The account as a pure state machine: a table of cases per event, and a hypothesis state
machine that drives random events against a model of the database and checks the
invariants after every step."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actors.account_machine import (
    AccountMachine,
    AccountSettings,
    AccountState,
    ArmTimer,
    At,
    Command,
    Log,
    ReadWindow,
    ReportIdle,
    ReportPaused,
    ReportReleased,
    ReportSuspectSettled,
    WriteAndClaim,
)
from actors.errors import AccountSuspended, PermanentError, RateLimited, TransientError
from actors.pacing import Pacing
from actors.retry import BackoffPolicy
from postroom_common import AccountPause, AccountView, Message, Priority, Status, Transition

T0 = datetime(2030, 1, 1, tzinfo=UTC)
PHONE = "+15550001"


class FixedRandom:
    def random(self) -> float:
        return 0.0


def at(seconds: float = 0.0) -> At:
    return At(T0 + timedelta(seconds=seconds), 1000.0 + seconds)


def message(message_id: int, priority: Priority = Priority.NORMAL, attempts: int = 0,
            due: float = 0.0, status: Status = Status.PENDING, max_attempts: int = 5) -> Message:
    when = T0 + timedelta(seconds=due)
    return Message(id=message_id, phone=PHONE, user_id=f"u{message_id}", text="t", attachment=None,
                   priority=priority, status=status, created_at=T0, scheduled_at=None,
                   available_at=when, attempts=attempts, max_attempts=max_attempts, last_error=None,
                   completed_at=None, updated_at=T0)


def claimed(m: Message) -> Message:
    return replace(m, status=Status.PROCESSING, attempts=m.attempts + 1)


def view(*due: Message, pause: AccountPause | None = None, next_due: float | None = None) -> AccountView:
    return AccountView(pause=pause, due=list(due),
                       next_due_at=None if next_due is None else T0 + timedelta(seconds=next_due))


def machine(**settings_: Any) -> AccountMachine:
    settings_.setdefault("idle_timeout", None)
    return AccountMachine(PHONE, AccountSettings(**settings_), Pacing(), FixedRandom(), at())


def of(commands: list[Command], kind: type[Any]) -> list[Any]:
    return [c for c in commands if isinstance(c, kind)]


def started(*due: Message, **settings_: Any) -> tuple[AccountMachine, list[Command]]:
    """A machine acquired, its window read with `due`: the commands after the read."""
    m = machine(**settings_)
    assert m.acquire(at(), recover=False) == [ReadWindow(4)]
    return m, m.loaded(view(*due), at())


# -- cases per event --------------------------------------------------------------------------


def test_acquire_recovers_first_when_asked_then_reads() -> None:
    """acquire(recover=True) settles an earlier owner's in-flight rows, then reads the window."""
    m = machine()
    assert m.acquire(at(), recover=True) == [WriteAndClaim(recover=True)]
    assert m.state is AccountState.ACQUIRING
    assert m.written(False, None, at()) == [ReadWindow(4)]


@pytest.mark.parametrize(("due", "first"), [
    ([message(1), message(2)], 1),  # enqueue order within a priority
    ([message(1, Priority.LOW), message(2, Priority.HIGH), message(3)], 2),  # HIGH first
])
def test_loaded_claims_the_first_due_message(due: list[Message], first: int) -> None:
    """After the read, the first message in priority then id order is claimed."""
    _, commands = started(*sorted(due, key=lambda m: m.order_key))
    (write,) = of(commands, WriteAndClaim)
    assert write.claim is not None and write.claim.id == first and write.record is None


def test_a_claim_and_its_send_then_the_outcome_and_the_next_claim() -> None:
    """Claimed: the writer sent it; the outcome is written with the next claim in one write."""
    m, _ = started(message(1), message(2))
    assert m.written(False, claimed(message(1)), at()) == []
    assert m.state is AccountState.SENDING and m.held == 1
    (write,) = of(m.send_ended(None, at(1)), WriteAndClaim)
    assert write.record == Transition(1, 1, Status.COMPLETED, at(1).now)
    assert write.claim is not None and write.claim.id == 2
    assert m.state is AccountState.RECORDING


@pytest.mark.parametrize(("error", "status", "give_back", "pause_until"), [
    (TransientError("x"), Status.RETRYING, False, None),  # retried after its backoff
    (PermanentError("x"), Status.FAILED, False, None),  # never again
    (RateLimited(30), Status.PENDING, True, 30.0),  # the whole account waits; the attempt given back
    (AccountSuspended("flood", 600), Status.PENDING, True, 600.0),  # likewise
    (AccountSuspended("banned"), Status.PENDING, True, None),  # disabled until lifted
])
def test_send_outcomes(error: BaseException, status: Status, give_back: bool,
                       pause_until: float | None) -> None:
    """Each kind of sender outcome becomes its transition (and pause), with no next claim after a pause."""
    m, _ = started(message(1), message(2))
    m.written(False, claimed(message(1)), at())
    (write,) = of(m.send_ended(error, at(1)), WriteAndClaim)
    assert write.record is not None and write.record.status is status
    assert write.record.give_back is give_back
    if give_back:
        assert write.claim is None and write.pause is not None
        expected = None if pause_until is None else at(1).now + timedelta(seconds=pause_until)
        assert write.pause.until == expected
    else:
        assert write.pause is None and write.claim is not None


def test_a_rate_limit_pauses_the_account_and_its_end_claims_again() -> None:
    """After a recorded rate limit nothing is claimed before the pause ends; then the same message."""
    m, _ = started(message(1))
    m.written(False, claimed(message(1)), at())
    m.send_ended(RateLimited(10), at(1))
    commands = m.written(True, None, at(1))
    assert of(commands, ReportPaused) == [ReportPaused(at(11).now)]
    (timer,) = of(commands, ArmTimer)
    assert timer.at == at(11).now and not of(commands, WriteAndClaim)
    assert m.timer_fired(timer.generation, at(11)) == [ReadWindow(8)]  # the window was emptied by the claim


def test_a_disabled_account_claims_nothing_until_unpaused() -> None:
    """AccountSuspended without a duration: disabled, reported; only unpause lets it claim again."""
    m, _ = started(message(1))
    m.written(False, claimed(message(1)), at())
    m.send_ended(AccountSuspended("banned"), at(1))
    commands = m.written(True, None, at(1))
    assert ReportPaused(None) in commands and m.disabled
    assert not of(m.timer_fired(99, at(3600)), WriteAndClaim)
    assert m.unpause(at(3601)) == [ReadWindow(8)]  # the given-back message is read back in its place
    (write,) = of(m.loaded(view(message(1)), at(3601)), WriteAndClaim)
    assert write.claim is not None and write.claim.id == 1


def test_a_failed_write_keeps_the_outcome_and_retries_it_alone() -> None:
    """A write that fails is asked again after storage_retry with the same outcome, and the
    claim it carried goes back to the window (with a reclaim of what may have committed)."""
    m, _ = started(message(1), message(2), storage_retry=2.0)
    m.written(False, claimed(message(1)), at())
    first = of(m.send_ended(None, at(1)), WriteAndClaim)[0]
    commands = m.write_failed("disk I/O error", at(1))
    (timer,) = of(commands, ArmTimer)
    assert timer.at == at(3).now
    (again,) = of(m.timer_fired(timer.generation, at(3)), WriteAndClaim)
    assert again.record == first.record and again.claim is None
    (reclaim,) = of(m.written(True, None, at(3)), WriteAndClaim)
    assert reclaim == WriteAndClaim(reclaim=True)  # alone: what it gives back may come first
    assert m.written(False, None, at(3)) == [ReadWindow(8)]


def test_a_stale_outcome_is_logged_not_retried() -> None:
    """An outcome the database no longer takes (recovered meanwhile) is logged and dropped."""
    m, _ = started(message(1))
    m.written(False, claimed(message(1)), at())
    m.send_ended(None, at(1))
    commands = m.written(False, None, at(1))
    assert [c.event for c in of(commands, Log)] == ["message.stale_outcome"]


def test_arrivals_during_the_read_are_merged_into_it() -> None:
    """A new message delivered while the window is read joins the window the read brings."""
    m = machine()
    m.acquire(at(), recover=False)
    assert m.arrived([message(7, Priority.HIGH)], at()) == []
    (write,) = of(m.loaded(view(message(1)), at()), WriteAndClaim)
    assert write.claim is not None and write.claim.id == 7


def test_a_future_arrival_arms_a_timer_and_is_read_when_due() -> None:
    """A message scheduled ahead is not claimed; a timer is armed for it and the window reread then."""
    m, commands = started()
    assert of(commands, WriteAndClaim) == []
    arrivals = m.arrived([message(5, due=60)], at())
    (timer,) = of(arrivals, ArmTimer)
    assert timer.at == at(60).now
    assert m.timer_fired(timer.generation, at(60)) == [ReadWindow(8)]


def test_an_idle_account_reports_itself_after_its_timeout() -> None:
    """Nothing due for idle_timeout: ReportIdle with the deliveries seen, not before."""
    m, commands = started(idle_timeout=30.0)
    (timer,) = of(commands, ArmTimer)
    assert timer.at == at(30).now and not of(commands, ReportIdle)
    assert of(m.timer_fired(timer.generation, at(30)), ReportIdle) == [ReportIdle(None, 0)]


def test_pacing_holds_the_claim_until_a_token() -> None:
    """At one message per 10 s, the second claim waits for its token on a timer."""
    m = AccountMachine(PHONE, AccountSettings(idle_timeout=None), Pacing(rate=0.1), FixedRandom(), at())
    m.acquire(at(), recover=False)
    m.loaded(view(message(1), message(2)), at())
    m.written(False, claimed(message(1)), at())
    commands = m.send_ended(None, at(0.5))
    (write,) = of(commands, WriteAndClaim)
    (timer,) = of(commands, ArmTimer)
    assert write.claim is None and timer.at == at(10.5).now  # ten seconds after the first send ended
    assert not of(m.written(True, None, at(0.5)), WriteAndClaim)


def test_release_waits_for_the_send_and_records_it_then_releases() -> None:
    """release during a send: no new claim; the outcome is recorded, then released."""
    m, _ = started(message(1), message(2))
    m.written(False, claimed(message(1)), at())
    assert m.release(at(1)) == []
    (write,) = of(m.send_ended(None, at(2)), WriteAndClaim)
    assert write.claim is None
    assert m.written(True, None, at(2))[-1] == ReportReleased()
    assert m.state is AccountState.RELEASED and m.held is None


def test_release_while_idle_is_immediate() -> None:
    """An idle account releases at once."""
    m, _ = started()
    assert m.release(at()) == [ReportReleased()]


def test_an_outcome_the_database_refuses_during_release_is_left_for_the_next_start() -> None:
    """Released with an outcome to record, and the write fails: released at once, nothing asked
    again and no timer armed; the log names the message left as the database has it."""
    m, _ = started(message(1), message(2))
    m.written(False, claimed(message(1)), at())
    m.release(at(1))
    m.send_ended(None, at(2))
    commands = m.write_failed("the database is unreachable", at(2))
    assert commands[-1] == ReportReleased() and not of(commands, WriteAndClaim) and not of(commands, ArmTimer)
    (left,) = [c for c in of(commands, Log) if c.event == "account.release_unrecorded"]
    assert (left.fields["message_id"], left.fields["attempt"]) == (1, 1)
    assert m.state is AccountState.RELEASED and m.held is None


def test_a_give_back_pending_at_release_is_tried_once() -> None:
    """A claim whose write failed before the release leaves a give-back to write: the release
    tries it once, and a second failure releases instead of retrying every storage_retry."""
    m, _ = started(message(1))
    m.write_failed("database is locked", at())  # the claim of 1: may have committed
    (reclaim,) = of(m.release(at(1)), WriteAndClaim)
    assert reclaim == WriteAndClaim(reclaim=True)
    assert m.write_failed("database is locked", at(1))[-1] == ReportReleased()


def test_a_read_that_fails_during_release_releases() -> None:
    """Released while the window is read: a failed read releases at once, no retry timer."""
    m = machine()
    m.acquire(at(), recover=False)
    assert m.release(at()) == []
    commands = m.read_failed("the database is unreachable", at())
    assert commands[-1] == ReportReleased() and not of(commands, ArmTimer)


def test_a_send_that_could_not_begin_is_given_back() -> None:
    """No thread for the send: the attempt goes back uncounted and the claim is tried again later."""
    m, _ = started(message(1))
    m.written(False, claimed(message(1)), at())
    (timer,) = of(m.send_not_begun("can't start new thread", at()), ArmTimer)
    (write,) = of(m.timer_fired(timer.generation, at(1)), WriteAndClaim)
    assert write.record is not None and write.record.give_back and write.record.status is Status.PENDING


def test_a_release_with_a_claim_in_the_write_gives_it_back_unsent() -> None:
    """Released while the outcome and the next claim are being written: the claimed message
    is called off before its send begins and goes back uncounted; then released."""
    m, _ = started(message(1), message(2))
    m.written(False, claimed(message(1)), at())
    m.send_ended(None, at(1))  # records 1, claims 2
    assert m.release(at(1)) == []
    assert m.written(True, claimed(message(2)), at(1)) == [Log("info", "message.sent",
                                                              {"message_id": 1, "attempt": 1})]
    (write,) = of(m.send_not_begun("released", at(1)), WriteAndClaim)
    assert write.record is not None and write.record.give_back and write.record.id == 2
    assert write.claim is None
    assert m.written(True, None, at(1)) == [ReportReleased()]


def test_a_write_that_never_went_out_claims_again_from_the_window() -> None:
    """The actor failed before its claim reached the writer: nothing committed, so the same
    message is claimed again, with no reclaim."""
    m, commands = started(message(1), message(2))
    (first,) = of(commands, WriteAndClaim)
    (again,) = of(m.write_not_sent(at()), WriteAndClaim)
    assert again == first and not again.reclaim


def test_a_suspect_is_settled_once_its_outcome_is_recorded_and_nothing_follows() -> None:
    """An account watching a suspect claims nothing after the suspect's outcome and reports it."""
    m = AccountMachine(PHONE, AccountSettings(idle_timeout=None), Pacing(), FixedRandom(), at(), watch=1)
    m.acquire(at(), recover=False)
    m.loaded(view(message(1), message(2)), at())
    m.written(False, claimed(message(1)), at())
    (write,) = of(m.send_ended(None, at(1)), WriteAndClaim)
    assert write.claim is None
    assert ReportSuspectSettled() in m.written(True, None, at(1))
    assert m.timer_fired(99, at(2)) == [] and not m.in_flight


# -- the state machine test ---------------------------------------------------------------------


@dataclass
class Row:
    message: Message
    claims: int = 0  # claims committed for this row
    recorded: set[int] = field(default_factory=set)  # the claims whose outcome was applied


class AccountWorld(RuleBasedStateMachine):
    """A model of the database, the writer and the sender around one AccountMachine."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self.m = AccountMachine(PHONE, AccountSettings(idle_timeout=30.0, storage_retry=1.0,
                                                       backoff=BackoffPolicy(base=1.0, max_delay=8.0)),
                                Pacing(), FixedRandom(), self.at)
        self.rows: dict[int, Row] = {}
        self.next_id = 1
        self.pause: AccountPause | None = None
        self.read: ReadWindow | None = None
        self.write: WriteAndClaim | None = None
        self.timer: ArmTimer | None = None
        self.sending: Message | None = None
        self.applied: list[tuple[int, int]] = []  # (id, claim) of every outcome applied
        self.orphans: set[int] = set()  # claimed by a write whose answer was lost
        self.released = False
        self.write_before_release = True
        self.run(self.m.acquire(self.at, recover=False))

    @property
    def at(self) -> At:
        return at(self.seconds)

    # -- carrying out the machine's commands, as the actor and the writer would -------------------

    def run(self, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, ReadWindow):
                assert self.read is None and self.write is None, "one read or write at a time"
                self.read = command
            elif isinstance(command, WriteAndClaim):
                assert self.write is None and self.read is None, "one read or write at a time"
                self.check_claim(command)
                self.write = command
                self.write_before_release = not self.released
            elif isinstance(command, ArmTimer):
                self.timer = command

    def check_claim(self, write: WriteAndClaim) -> None:
        if write.claim is None:
            return
        assert self.sending is None, "a claim while a send is in flight"
        assert not self.paused_now(), "a claim while paused"
        row = self.rows[write.claim.id].message
        if row.status in (Status.PENDING, Status.RETRYING):
            # Still open, so the writer will claim it: it must be due, and first. (A claim of a
            # message cancelled meanwhile is harmless: the writer refuses it.)
            due = self.due()
            assert row.available_at <= self.at.now, f"claimed {row.id} before it is due"
            assert write.claim.id == due[0].id, f"claimed {write.claim.id}, but {due[0].id} comes first"

    def paused_now(self) -> bool:
        p = self.pause
        return p is not None and (p.until is None or p.until > self.at.now)

    def open(self) -> list[Message]:
        return [r.message for r in self.rows.values()
                if r.message.status in (Status.PENDING, Status.RETRYING)]

    def due(self) -> list[Message]:
        """Open messages due now, in send order."""
        return sorted((m for m in self.open() if m.available_at <= self.at.now), key=lambda m: m.order_key)

    # -- rules ----------------------------------------------------------------------------------------

    @rule(priority=st.sampled_from(Priority), ahead=st.sampled_from([0.0, 0.0, 5.0, 40.0]))
    def enqueue(self, priority: Priority, ahead: float) -> None:
        new = replace(message(self.next_id, priority), available_at=self.at.now + timedelta(seconds=ahead))
        self.rows[new.id] = Row(new)
        self.next_id += 1
        self.run(self.m.arrived([new], self.at))

    @precondition(lambda self: self.read is not None)
    @rule()
    def answer_read(self) -> None:
        assert self.read is not None
        page, self.read = self.read.page, None
        due = self.due()
        future = [m.available_at for m in self.open() if m.available_at > self.at.now]
        pause = self.pause if self.paused_now() else None
        self.run(self.m.loaded(AccountView(pause, due[:page], min(future, default=None)), self.at))

    @precondition(lambda self: self.write is not None)
    @rule(lost=st.booleans())
    def fail_write(self, lost: bool) -> None:
        """The write fails; with `lost` it did commit, and only its answer was lost."""
        assert self.write is not None
        write, self.write = self.write, None
        if lost:
            _, orphan = self.apply(write)  # committed, but the writer starts no send without an answer
            if orphan is not None:  # PROCESSING, held by nobody: the next write must give it back
                self.orphans.add(orphan.id)
        self.run(self.m.write_failed("injected", self.at))

    @precondition(lambda self: self.write is not None)
    @rule()
    def crash_before_the_write_goes_out(self) -> None:
        """The actor fails before the write reaches the writer: nothing of it commits."""
        self.write = None
        self.run(self.m.write_not_sent(self.at))

    @precondition(lambda self: self.write is not None)
    @rule()
    def answer_write(self) -> None:
        assert self.write is not None
        write, self.write = self.write, None
        recorded, claimed_message = self.apply(write)
        self.sending = claimed_message
        self.run(self.m.written(bool(recorded), claimed_message, self.at))

    def apply(self, write: WriteAndClaim) -> tuple[frozenset[int], Message | None]:
        """What the writer does with one write, in its order: record, reclaim, pause, claim."""
        recorded = self.record(write)
        if write.reclaim:  # after the record, any PROCESSING row is held by nobody
            for row in self.rows.values():
                if row.message.status is Status.PROCESSING:
                    back = row.message.attempts - 1
                    row.message = replace(row.message, status=Status.PENDING, attempts=back)
            self.orphans.clear()
        if write.pause is not None:
            self.pause = write.pause
        claimed_message = None
        if write.claim is not None:
            row = self.rows[write.claim.id]
            if row.message in self.due():
                claimed_message = replace(row.message, status=Status.PROCESSING,
                                          attempts=row.message.attempts + 1)
                row.message = claimed_message
                row.claims += 1
        return recorded, claimed_message

    def record(self, write: WriteAndClaim) -> frozenset[int]:
        recorded: set[int] = set()
        if write.record is not None:
            row = self.rows[write.record.id]
            t = write.record
            if row.message.status is Status.PROCESSING and row.message.attempts == t.attempt:
                attempts = t.attempt - 1 if t.give_back else t.attempt
                row.message = replace(row.message, status=t.status, attempts=attempts,
                                      available_at=t.available_at or row.message.available_at)
                self.applied.append((t.id, row.claims))
                recorded.add(t.id)
        return frozenset(recorded)

    @precondition(lambda self: self.sending is not None)
    @rule(outcome=st.sampled_from(["ok", "ok", "transient", "permanent", "limited", "limited0", "banned"]))
    def send_ends(self, outcome: str) -> None:
        assert self.sending is not None
        sent, self.sending = self.sending, None
        assert self.rows[sent.id].message.status is Status.PROCESSING, "sent before its claim committed"
        error = {"ok": None, "transient": TransientError("x"), "permanent": PermanentError("x"),
                 "limited": RateLimited(3), "limited0": RateLimited(0),
                 "banned": AccountSuspended("banned")}[outcome]
        before = sent.attempts - 1
        self.run(self.m.send_ended(error, self.at))
        if outcome.startswith("limited") or outcome == "banned":
            assert self.write is not None and self.write.record is not None and self.write.record.give_back
            assert self.write.record.attempt - 1 == before

    @precondition(lambda self: self.sending is not None)
    @rule()
    def send_never_begins(self) -> None:
        """No thread for the send, or the account was released before it began."""
        assert self.sending is not None
        given, self.sending = self.sending, None
        self.run(self.m.send_not_begun("no thread", self.at))
        assert self.write is None or self.released, "a give-back goes out before anything else"
        if self.write is not None:
            assert self.write.record is not None and self.write.record.give_back
            assert self.write.record.id == given.id and self.write.claim is None

    @precondition(lambda self: self.paused_now() and self.pause is not None and self.pause.until is None)
    @rule()
    def lift(self) -> None:
        self.pause = None
        self.run(self.m.unpause(self.at))

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0, 10.0, 45.0]))
    def time_passes(self, seconds: float) -> None:
        self.seconds += seconds
        timer = self.timer
        if timer is not None and timer.at <= self.at.now:
            self.timer = None
            self.run(self.m.timer_fired(timer.generation, self.at))

    @precondition(lambda self: bool(self.open()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        open_ids = sorted(m.id for m in self.open())
        victim = data.draw(st.sampled_from(open_ids))
        self.rows[victim].message = replace(self.rows[victim].message, status=Status.CANCELLED)
        self.run(self.m.forget(victim))

    @precondition(lambda self: not self.released)
    @rule()
    def release(self) -> None:
        self.released = True
        self.run(self.m.release(self.at))

    # -- invariants -----------------------------------------------------------------------------------

    @invariant()
    def released_means_nothing_held(self) -> None:
        if self.m.state is AccountState.RELEASED:
            assert self.released and self.m.held is None and self.sending is None and self.write is None

    @invariant()
    def nothing_claimed_after_release(self) -> None:
        if self.released and self.write is not None:
            assert self.write.claim is None or self.write_before_release, "a claim after release"

    @invariant()
    def at_most_one_out(self) -> None:
        held = [i for i, r in self.rows.items()
                if r.message.status is Status.PROCESSING and i not in self.orphans]
        assert len(held) <= 1, f"{held} processing at once"

    @invariant()
    def each_outcome_recorded_once(self) -> None:
        assert len(self.applied) == len(set(self.applied)), "an outcome recorded twice"

    @invariant()
    def the_machine_agrees_on_what_it_sends(self) -> None:
        if self.m.sending is not None:
            assert self.sending is not None and self.m.sending.id == self.sending.id


AccountWorld.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
test_account_world = AccountWorld.TestCase


def test_a_retry_whose_answer_was_lost_is_not_overtaken_by_a_later_message() -> None:
    """Found by the state machine above: a transient failure's record commits but its answer is
    lost; sent again, it no longer applies (stale), and the account did not know its message was
    retrying at a time: once that time came, a message enqueued later was claimed first. A stale
    outcome now makes the account read its window again, so the retry goes first."""
    state = AccountWorld()
    state.answer_read()
    for _ in range(11):
        state.time_passes(seconds=0.5)
    state.enqueue(ahead=0.0, priority=Priority.HIGH)
    state.crash_before_the_write_goes_out()
    state.answer_write()
    state.send_ends(outcome="transient")
    state.fail_write(lost=True)
    state.time_passes(seconds=1.0)
    state.enqueue(ahead=0.0, priority=Priority.HIGH)
    state.answer_write()  # checks the claim: the first message comes first
    while state.read is not None or state.write is not None:
        if state.read is not None:
            state.answer_read()
        else:
            state.answer_write()
    state.teardown()
