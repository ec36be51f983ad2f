"""The persistence actor: the only writer, committing many writes per transaction.

On each turn it takes every write waiting in its inbox (up to `max_batch`), applies
them in one transaction, commits, and only then answers each caller (a user's enqueue,
an account's record), hands new rows straight to their running accounts
(`AccountDirectory`; the supervisor starts the others) and starts the sends of the
messages it claimed, whose answers go to their accounts with the ends of those sends.
One fsync serves the whole batch.

Under load the writes arrive back to back, each account a little after the last
commit answered it; committing the first one or two at once would spend an fsync
on each. So when work arrives right after a commit that served several callers, but fewer
than `GATHER_BELOW`, the writer gathers first (PostgreSQL's commit_delay, with its
commit_siblings): it looks at its inbox every `GATHER_SLICE` and commits as soon as
every caller of the last commit is back, or a slice brings nobody, or `commit_delay`
has passed. An idle writer, one serving a single caller in a loop, or one already
committing big batches (a boot with thousands of accounts, where sleeping only hands
the GIL to them) commits at once.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pykka

from actors._faults import crash_point
from actors.clock import Clock
from actors.directory import AccountDirectory
from actors.holdings import Holdings
from actors.hooks import HookDispatcher, events_of_commit
from actors.messages import (
    Arrived,
    BucketsTaken,
    Cancelled,
    CancelRow,
    DeleteFinished,
    Fenced,
    Insert,
    LiftPause,
    RecordAndClaim,
    Recorded,
    ReleaseBuckets,
    RequeueRow,
    SettleInFlight,
    StartAccountsFor,
    TakeBuckets,
    TrimChanges,
    WriteBarrier,
)
from actors.metrics import Metrics
from actors.privacy import mask_phone
from actors.runtime import Reply, TurnActor, TurnPool, forward, tell_if_alive
from postroom_common import (
    Change,
    ChangeKind,
    Delivery,
    IdempotencyConflict,
    Message,
    NewBroadcast,
    NewMessage,
    PostroomError,
    Status,
    StorageError,
    ValidationError,
)
from postroom_common.buckets import BUCKETS, bucket_of
from postroom_common.logs import get_logger
from storage import Storage
from storage.store import caused_by_the_request

log = get_logger("postroom.persistence")

#: A batch this big already shares one fsync among so many writes that waiting for more gains nothing.
GATHER_BELOW = 64
#: Seconds between two looks at the inbox while gathering.
GATHER_SLICE = 0.0001
#: Finished rows deleted per cleanup transaction. Each chunk holds the writer, so the accounts'
#: next claims wait behind it: the chunk is kept small enough that a cleanup does not lengthen
#: the longest pause between two sends (bench scenario g measures it).
CLEANUP_CHUNK = 250


@dataclass
class HealthState:
    """Shared between the persistence actor (writes it) and the supervisor (reads it)."""

    degraded: bool = False
    last_error: str | None = None
    commits: int = 0
    committing_since: float | None = None
    """When (monotonic) the commit under way began; None between commits."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def committing(self, monotonic: float) -> None:
        with self._lock:
            self.committing_since = monotonic

    def ok(self) -> None:
        with self._lock:
            self.degraded, self.last_error = False, None
            self.commits += 1
            self.committing_since = None

    def failed(self, error: StorageError) -> None:
        with self._lock:
            self.degraded, self.last_error = True, str(error)
            self.committing_since = None

    def stalled(self, monotonic: float, after: float) -> float | None:
        """Seconds the commit under way has waited for the database, if more than `after`."""
        with self._lock:
            since = self.committing_since
        waited = None if since is None else monotonic - since
        return waited if waited is not None and waited > after else None

    def snapshot(self, monotonic: float | None = None,
                 stalled_after: float = math.inf) -> tuple[bool, str | None]:
        """Degraded or not, and why: the last commit failed, or (given the time) the commit under
        way has waited for the database more than `stalled_after` seconds."""
        waited = None if monotonic is None else self.stalled(monotonic, stalled_after)
        with self._lock:
            degraded, error = self.degraded, self.last_error
        if waited is None:
            return degraded, error
        stall = f"a commit has waited {waited:.0f} s for the database"
        return True, stall if error is None else f"{stall}; before it: {error}"


class PersistenceActor(TurnActor):
    """The single writer, with group commit; its turns go ahead of the accounts' (`urgent`)."""

    urgent = True

    def __init__(self, pool: TurnPool, storage: Storage, clock: Clock, health: HealthState,
                 directory: AccountDirectory, supervisor: pykka.ActorRef[Any], *, max_batch: int = 2000,
                 cleanup_chunk: int = CLEANUP_CHUNK, commit_delay: float = 0.0,
                 holdings: Holdings | None = None, hooks: HookDispatcher | None = None,
                 metrics: Metrics | None = None) -> None:
        super().__init__(pool)
        self.storage = storage
        self.clock = clock
        self.health = health
        self.directory = directory
        self.supervisor = supervisor
        self.max_batch = max_batch
        self.cleanup_chunk = cleanup_chunk
        self.commit_delay = commit_delay
        self.holdings = holdings  # the buckets whose accounts' writes it lets through (None: all)
        self.hooks = hooks  # the host's outcome hooks, fed after each commit (None: no event is built)
        self.metrics = metrics  # counts each commit's events too (None: nothing is timed or counted)
        self._last_commit = 0.0  # time.monotonic() when the last batch was answered
        self._last_batch = 0  # requests it served

    def receive(self, message: Any, reply: Reply | None) -> None:
        if (self.commit_delay and 1 < self._last_batch < GATHER_BELOW
                and time.monotonic() - self._last_commit < self.commit_delay):
            self._gather()  # back to back: let the others answered last time catch up
        batch = [(message, reply), *self.take_waiting(self.max_batch - 1)]
        self._commit(batch)
        self._last_commit, self._last_batch = time.monotonic(), len(batch)

    def _gather(self) -> None:
        """Wait, at most `commit_delay`, while the callers answered by the last commit keep
        coming back; stop as soon as all are back or a slice passes with none arriving."""
        deadline = time.monotonic() + self.commit_delay
        waiting = len(self.actor_inbox)
        while waiting + 1 < self._last_batch and time.monotonic() < deadline:
            time.sleep(GATHER_SLICE)
            before, waiting = waiting, len(self.actor_inbox)
            if waiting == before:
                return

    def _commit(self, batch: Sequence[tuple[Any, Reply | None]]) -> None:
        began = time.monotonic()
        self.health.committing(began)
        try:
            with self.storage.write_transaction():
                outcomes = self._apply_batch([message for message, _ in batch])
        except Exception as raised:  # noqa: BLE001 - the single writer must not die
            error = raised if isinstance(raised, StorageError) else StorageError(
                f"internal error in the persistence actor: {type(raised).__name__}")
            if error is not raised:
                error.__cause__ = raised
            self.health.failed(error)
            log.error("storage.commit_failed", error=str(error), batch=len(batch))
            if len(batch) > 1 and (error is not raised or caused_by_the_request(error)):
                for request in batch:  # one bad write must not fail its neighbours: each alone
                    self._commit([request])
                return
            for request in batch:  # the database failed: each alone would fail, and wait, the same
                _fail(request, error)
            return
        self.health.ok()
        if self.metrics is not None:
            self.metrics.commit_took(len(batch), time.monotonic() - began)
        self._after_commit(batch, outcomes)
        if self.hooks is not None or self.metrics is not None:
            self._report(batch, outcomes)

    def _report(self, batch: Sequence[tuple[Any, Reply | None]], outcomes: Sequence[Any]) -> None:
        """What the commit made final or changed, to the hooks and the metrics."""
        requests, now = [message for message, _ in batch], self.clock.now()
        if self.hooks is not None:
            self.hooks.submit(events_of_commit(requests, outcomes, now))
        if self.metrics is not None:
            self.metrics.committed(requests, outcomes, now)

    def _apply_batch(self, messages: Sequence[Any]) -> list[Any]:
        """Run a batch inside the open transaction, one statement per kind of write.

        Records, reclaims, settlements and claims of the whole batch go to storage together
        (one SELECT and one executemany each), in that order; inserts keep their order. The
        accounts' writes but their records are fenced first, once for the batch (`_fence`).
        """
        now = self.clock.now()
        accounts = [m for m in messages if isinstance(m, RecordAndClaim)]
        # The bucket rows first, then the messages': the order a takeover locks them in too.
        epochs, fenced = self._fence([a.phone for a in accounts if _fenced_writes(a)]
                                     + [m.phone for m in messages if isinstance(m, SettleInFlight)])
        records = [a.record for a in accounts if a.record is not None]
        recorded = self.storage.record(records) if records else set()
        if any(t.status is Status.RETRYING for t in records):
            crash_point("record.retry.mid")
        settled: dict[str, list[Message]] = {}
        for account in accounts:
            if account.phone not in fenced:
                settled_now = self._prepare_claim(account, now, epochs)
                if settled_now:
                    settled[account.phone] = settled_now
        claim_ids = [a.claim for a in accounts if a.claim is not None and a.phone not in fenced]
        claimed = self.storage.claim(claim_ids, now, epochs) if claim_ids else {}
        inserts = [m for m in messages if isinstance(m, Insert)]
        answers = self._insert_in_order(inserts)
        self._announce_foreign_rows(inserts, answers, now)
        inserted = iter(answers)
        outcomes: list[Any] = []
        for message in messages:
            match message:
                case RecordAndClaim(phone=phone, record=record, claim=claim):
                    outcomes.append(Recorded(record is not None and record.id in recorded,
                                             None if claim is None else claimed.get(claim),
                                             fenced=phone in fenced, settled=settled.get(phone, ())))
                case Insert():
                    outcomes.append(next(inserted))
                case SettleInFlight(delivery, phone):
                    outcomes.append(Fenced(phone) if phone in fenced else self._settle(
                        delivery, phone, now, epochs.get(bucket_of(phone))))
                case _:
                    outcomes.append(self._apply_one(message, now))
        return outcomes

    def _foreign(self) -> set[int] | None:
        """The buckets this node does not hold (whose owners must hear of its writes through the
        change feed); None when it holds them all, as the one node of its database does."""
        if self.holdings is None:
            return None
        held = self.holdings.held()
        return None if len(held) == BUCKETS else set(range(BUCKETS)) - held

    def _announce_foreign_rows(self, inserts: Sequence[Insert],
                               answers: Sequence[list[Any] | IdempotencyConflict], now: datetime) -> None:
        """New rows of accounts another node sends for go into the change feed, in this
        transaction: their owner reads them from there (a producer's rows go the same way)."""
        foreign = self._foreign()
        if foreign is None:
            return
        changes: list[Change] = []
        for insert, answer in zip(inserts, answers, strict=True):
            if isinstance(answer, IdempotencyConflict):
                continue
            news = insert.news
            phones = ([phone for phone, _ in news.recipients] if isinstance(news, NewBroadcast)
                      else [new.phone for new in news])
            ids = [a for a, phone in zip(answer, phones, strict=True)
                   if type(a) is int and bucket_of(phone) in foreign]
            if ids:
                changes.append(Change(ChangeKind.INSERTED, first_id=min(ids), last_id=max(ids)))
        if changes:
            self.storage.announce(changes, now)

    def _announce_if_foreign(self, kind: ChangeKind, message: Message | None, phone: str,
                             now: datetime) -> None:
        """A cancel, requeue or lifted pause of an account another node sends for, to its owner."""
        foreign = self._foreign()
        if foreign is not None and bucket_of(phone) in foreign:
            ids = None if message is None else message.id
            self.storage.announce([Change(kind, phone, ids, ids)], now)

    def _fence(self, phones: Sequence[str]) -> tuple[dict[int, int], set[str]]:
        """The epochs this node claims under, and which of `phones` it may not write for: those
        whose bucket it does not hold, or not before its claim deadline, or (asked of the
        database, the bucket rows kept `FOR SHARE` until the commit) no longer at its epoch."""
        if not phones or self.holdings is None:  # None: a writer without nodes (a test's)
            return {}, set()
        epochs = self.holdings.epochs(time.monotonic())
        wanted = {b: epochs[b] for b in {bucket_of(p) for p in phones} if b in epochs}
        node = self.holdings.node
        held = self.storage.holding(node, wanted) if wanted and node is not None else set()
        fenced = {p for p in phones if bucket_of(p) not in held}
        if fenced:
            log.warning("writes.fenced", accounts=len(fenced),
                        buckets=sorted({bucket_of(p) for p in fenced}))
        return {b: e for b, e in epochs.items() if b in held}, fenced

    def _prepare_claim(self, account: RecordAndClaim, now: datetime, epochs: dict[int, int]) -> list[Message]:
        """What an account's transaction does besides its record and its claim; the rows it
        settled."""
        epoch = epochs.get(bucket_of(account.phone))
        if account.pause is not None:
            self.storage.set_pause(account.pause, now)
        if account.reclaim is not None:
            self.storage.give_back_orphans(account.reclaim, now, epoch)
        if account.settle is None:
            return []
        delivery, phone = account.settle
        return self.storage.recover_interrupted(delivery, now, phone, epoch)

    def _settle(self, delivery: Delivery, phone: str, now: datetime, epoch: int | None) -> list[Message]:
        settled = self.storage.recover_interrupted(delivery, now, phone, epoch)
        if settled:
            crash_point("recover.mid")
        return settled

    def _insert_in_order(self, inserts: Sequence[Insert]) -> list[list[Any] | IdempotencyConflict]:
        """Each `Insert`'s answers, its rows written after those of the ones before it: ids
        follow the order the enqueues came in.

        A run of plain inserts shares one statement; a broadcast (written from its shared
        fields) and a keyed batch (all or nothing) are written alone.
        """
        answers: list[list[Any] | IdempotencyConflict] = []
        run: list[Insert] = []

        def write_run() -> None:
            rows = iter(self.storage.insert([new for insert in run for new in insert.news]))
            answers.extend([next(rows) for _ in insert.news] for insert in run)
            run.clear()

        for insert in inserts:
            if isinstance(insert.news, NewBroadcast) or insert.keyed:
                if run:
                    write_run()
                answers.append(self._insert_alone(insert))
            else:
                run.append(insert)
        if run:
            write_run()
        return answers

    def _insert_alone(self, insert: Insert) -> list[Any] | IdempotencyConflict:
        """A broadcast or a keyed batch: its answers, or the conflict that refused all of it.

        Written whole in this transaction, however big, though other writes wait meanwhile:
        spread over several commits, an unkeyed batch would no longer be all or nothing, a
        key reused in its last part could no longer refuse its first, and an enqueue its
        caller sent after it could be written before its end.
        """
        if not insert.news:
            return []
        try:
            return self.storage.insert(insert.news, all_or_nothing=True)
        except IdempotencyConflict as conflict:
            return conflict  # nothing was written: the transaction serves the others

    def _apply_one(self, message: Any, now: datetime) -> Any:
        """A write of its own kind; domain errors are returned, not raised."""
        try:
            match message:
                case CancelRow(message_id):
                    cancelled = self.storage.cancel(message_id, now)
                    self._announce_if_foreign(ChangeKind.CANCELLED, cancelled, cancelled.phone, now)
                    return cancelled
                case RequeueRow(message_id):
                    requeued = self.storage.requeue(message_id, now)
                    self._announce_if_foreign(ChangeKind.REQUEUED, requeued, requeued.phone, now)
                    return requeued
                case TakeBuckets(node, buckets, delivery, force):
                    epochs, settled = self.storage.take_buckets(node, buckets, delivery, now, force=force)
                    if settled:
                        crash_point("recover.mid")
                    return BucketsTaken(epochs, settled)
                case ReleaseBuckets(node, buckets):
                    self.storage.release_buckets(node, buckets)
                    return None
                case DeleteFinished(cutoff):
                    return self.storage.delete_finished_before(cutoff, self.cleanup_chunk)
                case LiftPause(phone):
                    lifted = self.storage.clear_pause(phone)
                    if lifted:
                        self._announce_if_foreign(ChangeKind.PAUSED, None, phone, now)
                    return lifted
                case TrimChanges(before):
                    return self.storage.trim_changes(before)
                case WriteBarrier():
                    return None
        except StorageError:
            raise
        except PostroomError as error:
            return error
        raise TypeError(f"persistence actor cannot handle {type(message).__name__}")

    # -- after the commit ----------------------------------------------------------------------

    def _after_commit(self, batch: Sequence[tuple[Any, Reply | None]], outcomes: Sequence[Any]) -> None:
        """Answer every caller, hand new rows to their accounts, start the claimed sends."""
        if any(isinstance(message, Insert) for message, _ in batch):
            crash_point("enqueue.committed")
        new_rows: list[Message] = []
        sends: list[tuple[RecordAndClaim, Recorded, Reply | None]] = []
        for (message, reply), outcome in zip(batch, outcomes, strict=True):
            match message:
                case Insert():
                    new_rows += self._answer_insert(message, reply, outcome)
                case RecordAndClaim():
                    if outcome.claimed is not None and message.send is not None:
                        sends.append((message, outcome, reply))  # answered with the send's end
                    else:
                        _answer(reply, outcome)
                    if outcome.applied and message.record is not None \
                            and message.record.status is Status.COMPLETED:
                        crash_point("record.completed")
                case CancelRow():
                    _answer(reply, outcome)
                    if isinstance(outcome, Message):
                        log.info("message.cancelled", message_id=outcome.id)
                        self._tell_account(outcome.phone, Cancelled(outcome.id))
                case RequeueRow():
                    _answer(reply, outcome)
                    if isinstance(outcome, Message):
                        log.info("message.requeued", message_id=outcome.id)
                        new_rows.append(outcome)
                case DeleteFinished():
                    self._continue_cleanup(message, reply, outcome)
                case TakeBuckets() if self.holdings is not None:
                    self.holdings.won(outcome.epochs)  # before the answer: the taker's accounts claim at once
                    _answer(reply, outcome)
                case ReleaseBuckets(buckets=buckets) if self.holdings is not None:
                    self.holdings.given_up(buckets)
                    _answer(reply, outcome)
                case _:
                    _answer(reply, outcome)
        self._route(new_rows)
        if sends:
            crash_point("claim.committed")
        for request, recorded, reply in sends:
            assert request.send is not None
            assert recorded.claimed is not None
            request.send.start(recorded.claimed, functools.partial(_answer, reply, recorded))

    def _answer_insert(self, insert: Insert, reply: Reply | None, outcome: Any) -> list[Message]:
        """Answer an insert's caller (or log its refusal, told); the rows it wrote."""
        try:
            if isinstance(outcome, PostroomError):
                raise outcome  # a batch refused whole
            ids = insert.ids(outcome)
        except PostroomError as refused:
            if reply is not None:
                reply.fail(refused)
            else:
                log_unanswered(insert.kind.value, refused)
            return []
        if reply is not None:
            reply.answer(insert.answer(ids))
        written = _new_messages(insert.news, outcome)
        _log_enqueued(written)
        return written

    def _route(self, messages: Sequence[Message]) -> None:
        """New or requeued rows straight to their running accounts; the others to the supervisor."""
        if not messages:
            return
        by_account: dict[str, list[Message]] = {}
        for message in messages:
            by_account.setdefault(message.phone, []).append(message)
        unrouted: list[Message] = []
        for phone, mine in by_account.items():
            account = self.directory.deliver_to(phone)
            if account is None:
                unrouted += mine
            else:
                tell_if_alive(account, Arrived(mine))
        if unrouted:
            tell_if_alive(self.supervisor, StartAccountsFor(unrouted))

    def _tell_account(self, phone: str, message: Any) -> None:
        account = self.directory.get(phone)
        if account is not None:
            tell_if_alive(account, message)

    def _continue_cleanup(self, request: DeleteFinished, reply: Reply | None, deleted_now: Any) -> None:
        if isinstance(deleted_now, PostroomError):
            _answer(reply, deleted_now)
            return
        so_far = request.deleted_so_far + deleted_now
        if deleted_now >= self.cleanup_chunk:
            # More may remain: the next chunk goes behind the writes waiting now.
            forward(self.actor_ref, DeleteFinished(request.cutoff, so_far), reply)
            return
        log.info("cleanup.finished", deleted=so_far)
        _answer(reply, so_far)


def _answer(reply: Reply | None, outcome: Any) -> None:
    if reply is None:
        return
    if isinstance(outcome, PostroomError):
        reply.fail(outcome)
    else:
        reply.answer(outcome)


def _fail(request: tuple[Any, Reply | None], error: StorageError) -> None:
    message, reply = request
    if reply is not None:
        reply.fail(error)
    else:
        log.error("storage.write_failed", kind=type(message).__name__, error=str(error))


def _new_messages(news: Sequence[NewMessage], outcome: Sequence[Any]) -> list[Message]:
    """The rows an insert wrote, as `Message`s: a new row answers its id (an int); a key
    repeated in the batch answers the first one's id again, a replay the earlier `Message`."""
    first_at: dict[int, int] = {}
    for position, answer in enumerate(outcome):
        if type(answer) is int:
            first_at.setdefault(answer, position)
    return [news[position].as_pending(message_id) for message_id, position in first_at.items()]


def _log_enqueued(messages: Sequence[Message]) -> None:
    """One line per single enqueue; one line per batch or broadcast."""
    if not messages or not log.enabled(logging.INFO):
        return
    if len(messages) > 1:
        # A broadcast is one line, not 100,000: each message's id appears again when it is sent.
        log.info("messages.enqueued", count=len(messages), first_id=messages[0].id, last_id=messages[-1].id)
        return
    (message,) = messages
    log.info("message.enqueued", message_id=message.id, priority=message.priority.name,
             account=mask_phone(message.phone))


def log_unanswered(command: str, error: Exception) -> None:
    """A command (named by its type) that came by `tell` failed: nobody waits for the error,
    so it is logged."""
    event = "command.refused" if isinstance(error, PostroomError) else "command.failed"
    log.error(event, command=command, error=type(error).__name__,
              reason=str(error) if isinstance(error, ValidationError) else None)


def _fenced_writes(request: RecordAndClaim) -> bool:
    """Whether an account's request writes more than its record (what fencing refuses)."""
    return (request.claim is not None or request.pause is not None or request.reclaim is not None
            or request.settle is not None)
