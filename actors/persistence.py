"""The persistence actor: the only writer, committing many writes per transaction.

On each wake-up it takes every write waiting in its inbox (up to `max_batch`),
applies them in one transaction, commits, and only then answers each caller and
routes new rows to their accounts. One fsync serves the whole batch.

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

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from actors._faults import crash_point
from actors._mailbox import DeferredReplyActor, Request, log_unanswered
from actors.clock import Clock
from actors.messages import (
    Advance,
    Advanced,
    Cancel,
    Cleanup,
    Committed,
    Forget,
    Inserted,
    LiftPause,
    Persist,
    Recover,
    Requeue,
)
from postroom_common import (
    IdempotencyConflict,
    Message,
    NewBroadcast,
    NewMessage,
    PostroomError,
    Status,
    StorageError,
)
from postroom_common.logs import get_logger
from storage import Storage

log = get_logger("postroom.persistence")

#: A batch this big already spends under 0.02 fsyncs per write: no need to wait for more.
GATHER_BELOW = 64
#: Seconds between two looks at the inbox while gathering.
GATHER_SLICE = 0.0001
#: Finished rows deleted per cleanup transaction. Each chunk holds the writer, so the accounts'
#: next claims wait behind it: with 1,000 the longest pause between two sends grew to ~300 ms
#: (bench scenario g), with 250 it stays at the level seen without a cleanup.
CLEANUP_CHUNK = 250


@dataclass
class HealthState:
    """Shared between the persistence actor (writes it) and the supervisor (reads it)."""

    degraded: bool = False
    last_error: str | None = None
    commits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ok(self) -> None:
        with self._lock:
            self.degraded, self.last_error = False, None
            self.commits += 1

    def failed(self, error: StorageError) -> None:
        with self._lock:
            self.degraded, self.last_error = True, str(error)

    def snapshot(self) -> tuple[bool, str | None]:
        with self._lock:
            return self.degraded, self.last_error


#: Called after a commit, in the persistence thread: (kind, payload). Used to route
#: committed rows through the supervisor without the persistence actor knowing accounts.
Notify = Callable[[Any], None]


class PersistenceActor(DeferredReplyActor):
    """Single writer with group commit."""

    def __init__(self, storage: Storage, clock: Clock, notify: Notify, health: HealthState,
                 *, max_batch: int = 2000, cleanup_chunk: int = CLEANUP_CHUNK,
                 commit_delay: float = 0.0) -> None:
        super().__init__()
        self.storage = storage
        self.clock = clock
        self.notify = notify
        self.health = health
        self.max_batch = max_batch
        self.cleanup_chunk = cleanup_chunk
        self.commit_delay = commit_delay
        self._last_commit = 0.0  # time.monotonic() when the last batch was answered
        self._last_batch = 0  # requests it served

    def on_stop(self) -> None:
        super().on_stop()
        self.storage.close()

    def handle(self, request: Request) -> None:
        if (self.commit_delay and 1 < self._last_batch < GATHER_BELOW
                and time.monotonic() - self._last_commit < self.commit_delay):
            self._gather()  # back to back: let the others answered last time catch up
        batch = [request, *self.actor_inbox.take_nowait(self.max_batch - 1)]
        self._commit(batch)
        self._last_commit, self._last_batch = time.monotonic(), len(batch)

    def _gather(self) -> None:
        """Wait, at most `commit_delay`, while the callers answered by the last commit keep
        coming back; stop as soon as all are back or a slice passes with none arriving.

        A fixed wait of 1 ms held 16 threads enqueueing one at a time to ~5,600-5,900 msg/s
        (bench b, 8,000-8,300 with this gathering; README "Performance").
        """
        deadline = time.monotonic() + self.commit_delay
        waiting = len(self.actor_inbox)
        while waiting + 1 < self._last_batch and time.monotonic() < deadline:
            time.sleep(GATHER_SLICE)
            before, waiting = waiting, len(self.actor_inbox)
            if waiting == before:
                return

    def _commit(self, batch: Sequence[Request]) -> None:
        try:
            with self.storage.write_transaction():
                outcomes = self._apply_batch([request.message for request in batch])
        except Exception as raised:  # noqa: BLE001 - the single writer must not die
            # Whatever went wrong, the single writer must survive and tell every caller.
            error = raised if isinstance(raised, StorageError) else StorageError(
                f"internal error in the persistence actor: {type(raised).__name__}")
            if error is not raised:
                error.__cause__ = raised
            self.health.failed(error)
            log.error("storage.commit_failed", error=str(error), batch=len(batch))
            if len(batch) == 1:
                self._fail(batch[0], error)
                return
            # One bad write must not fail its neighbours: try each alone.
            for request in batch:
                self._commit([request])
            return
        self.health.ok()
        if any(isinstance(request.message, Persist) for request in batch):
            crash_point("enqueue.committed")
            self._hand_over_inserted(batch, outcomes)
        for request, outcome in zip(batch, outcomes, strict=True):
            self._settle(request, outcome)

    def _hand_over_inserted(self, batch: Sequence[Request], outcomes: Sequence[Any]) -> None:
        """One `Inserted` per commit, before any caller hears back, so that a command sent
        after an answer finds the new rows routed (16 single enqueues: one tell, not 16)."""
        parts: list[tuple[Sequence[NewMessage], list[tuple[int, int]]]] = []
        for request, outcome in zip(batch, outcomes, strict=True):
            if isinstance(request.message, Persist) and not isinstance(outcome, PostroomError):
                rows = _new_rows(outcome)
                if rows:
                    parts.append((request.message.news, rows))
        if parts:
            self.notify(Inserted(parts))

    def _apply_batch(self, messages: Sequence[Any]) -> list[Any]:
        """Run a batch inside the open transaction, one statement per kind of write.

        Records, claims and inserts of the whole batch go to storage together (one
        SELECT and one executemany each), records before claims; each caller then gets
        its own share.
        """
        now = self.clock.now()
        advances = [m for m in messages if isinstance(m, Advance)]
        records = [t for a in advances for t in a.record]
        recorded = self.storage.record(records) if records else set()
        if any(t.status is Status.RETRYING for t in records):
            crash_point("record.retry.mid")
        for pause in (a.pause for a in advances if a.pause is not None):
            self.storage.set_pause(pause, now)
        claim_ids = [i for a in advances for i in a.claim]
        claimed = self.storage.claim(claim_ids, now) if claim_ids else {}
        inserted = iter(self._insert_in_order([m for m in messages if isinstance(m, Persist)]))
        outcomes: list[Any] = []
        for message in messages:
            match message:
                case Advance(record, claim):
                    outcomes.append(Advanced(
                        recorded=frozenset(t.id for t in record if t.id in recorded),
                        claimed={i: claimed[i] for i in claim if i in claimed}))
                case Persist():
                    outcomes.append(next(inserted))
                case _:
                    outcomes.append(self._apply_one(message, now))
        return outcomes

    def _insert_in_order(self, persists: Sequence[Persist]) -> list[list[Any] | IdempotencyConflict]:
        """Each `Persist`'s answers, its rows written after those of the ones before it: ids
        follow the order the enqueues came in (a broadcast told before an enqueue to the same
        account is sent first).

        A run of enqueues and batches shares one insert; a broadcast has its own (it is
        written from its shared fields, never taken apart into 100,000 objects).
        """
        answers: list[list[Any] | IdempotencyConflict] = []
        run: list[Persist] = []

        def write_run() -> None:
            inserted = iter(self.storage.insert([new for persist in run for new in persist.news]))
            answers.extend([next(inserted) for _ in persist.news] for persist in run)
            run.clear()

        for persist in persists:
            if isinstance(persist.news, NewBroadcast) or persist.keyed:
                if run:
                    write_run()
                answers.append(self._insert_alone(persist))
            else:
                run.append(persist)
        if run:
            write_run()
        return answers

    def _insert_alone(self, persist: Persist) -> list[Any] | IdempotencyConflict:
        """A broadcast or a keyed batch: its answers, or the conflict that refused all of it."""
        if not persist.news:
            return []
        try:
            return self.storage.insert(persist.news, all_or_nothing=True)
        except IdempotencyConflict as conflict:
            return conflict  # nothing was written: the transaction serves the others

    def _apply_one(self, message: Any, now: datetime) -> Any:
        """A write of its own kind; domain errors are returned, not raised."""
        try:
            match message:
                case Cancel(message_id):
                    return self.storage.cancel(message_id, now)
                case Requeue(message_id):
                    return self.storage.requeue(message_id, now)
                case Recover(delivery, phone):
                    settled = self.storage.recover_interrupted(delivery, now, phone)
                    if settled:
                        crash_point("recover.mid")
                    return settled
                case Cleanup(cutoff):
                    return self.storage.delete_finished_before(cutoff, self.cleanup_chunk)
                case LiftPause(phone):
                    return self.storage.clear_pause(phone)
        except StorageError:
            raise
        except PostroomError as error:
            return error
        raise TypeError(f"persistence actor cannot handle {type(message).__name__}")

    def _settle(self, request: Request, outcome: Any) -> None:
        """After the commit: answer the caller, then tell whoever must act on the new state."""
        message = request.message
        match message:
            case Persist(_, user_request, batch):
                # No user request: it came past the supervisor (actors/door.py), asking us.
                self._answer_persist(request if user_request is None else user_request, outcome, batch)
            case Cancel(_, user_request):
                self._answer(user_request, outcome)
                if isinstance(outcome, Message):
                    log.info("message.cancelled", message_id=outcome.id)
                    self.notify(Forget(outcome.phone, outcome.id))
            case Requeue(_, user_request):
                self._answer(user_request, outcome)
                if isinstance(outcome, Message):
                    log.info("message.requeued", message_id=outcome.id)
                    self.notify(Committed([outcome]))
            case Cleanup(cutoff, user_request, so_far):
                self._continue_cleanup(cutoff, user_request, so_far, outcome)
            case _:
                self._answer(request, outcome)

    def _answer_persist(self, request: Request, outcome: list[Any] | PostroomError, batch: bool) -> None:
        if not isinstance(outcome, PostroomError):
            errors = [o for o in outcome if isinstance(o, PostroomError)]
            if not errors:
                ids = [o.id if isinstance(o, Message) else o for o in outcome]
                request.answer(ids if batch else ids[0])
                return
            outcome = errors[0]  # a single enqueue's conflict: batches are refused whole
        if request.expects_reply:
            request.fail(outcome)
        else:
            log_unanswered("EnqueueBatch" if batch else "Enqueue", outcome)

    def _continue_cleanup(self, cutoff: datetime, request: Request | None, so_far: int,
                          deleted_now: int) -> None:
        if deleted_now >= self.cleanup_chunk:
            # More may remain: queue the next chunk behind the writes waiting now.
            self.actor_ref.tell(Cleanup(cutoff, request, so_far + deleted_now))
            return
        log.info("cleanup.finished", deleted=so_far + deleted_now)
        if request is not None:
            request.answer(so_far + deleted_now)

    def _answer(self, request: Request, outcome: Any) -> None:
        if isinstance(outcome, PostroomError):
            request.fail(outcome)
        else:
            request.answer(outcome)

    def _fail(self, request: Request, error: StorageError) -> None:
        user_request = getattr(request.message, "request", None)
        target = user_request if isinstance(user_request, Request) else request
        if target.expects_reply:
            target.fail(error)
        else:
            log.error("storage.write_failed", kind=type(request.message).__name__, error=str(error))


def _new_rows(outcome: Sequence[Any]) -> list[tuple[int, int]]:
    """(id, position) of the rows an insert wrote: a new row answers its id (an int); a key
    repeated in the batch answers the first one's id again, a replay the earlier `Message`."""
    first_at: dict[int, int] = {}
    for position, answer in enumerate(outcome):
        if type(answer) is int:
            first_at.setdefault(answer, position)
    return list(first_at.items())
