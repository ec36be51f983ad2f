"""A pool of daemon threads that grows on demand, up to an optional cap, and shrinks when idle.

Two parts of postroom need one: the sends (a thread per send running at once, so a
sender that hangs never delays another account) and the account actors' turns (a
few threads shared by every account, so 10,000 accounts do not cost 10,000 threads).
The threads are daemons: a sender hung forever must not keep the process alive
(`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit).

An idle thread waits on a lock of its own, and the one idle last takes the next job:
the work stays on the fewest threads it needs and the others idle out. Every thread
that allocates gets a malloc arena of its own (glibc, up to eight per core), and an
arena keeps the memory it once held: work spread over many threads costs memory that
is never given back.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from actors._faults import fault_point
from postroom_common.logs import get_logger

log = get_logger("postroom.pool")

Job = Callable[[], None]
CallLater = Callable[[float, Job], object]
"""A clock's `call_later`: run a job after so many seconds, on the timer thread."""

#: Seconds between two warnings that abandoned threads count against the cap again.
WARN_PAST_BOUND_EVERY = 60.0
#: Looks in a row a busy thread must be found on the same job to count as stuck: a thread
#: waiting for the GIL (switched every 5 ms) is seldom stuck that long.
STUCK_LOOKS = 2


@dataclass(frozen=True, slots=True)
class Abandoned:
    """The threads of a pool still running a job its caller gave up on (`DaemonPool.abandon`)."""

    count: int
    """How many threads are still in such a job."""
    oldest_since: float | None
    """When the oldest of those jobs began (the callers' monotonic clock); None if none is."""
    past_bound: int
    """Of them, how many count against `max_threads` (the others past `max_abandoned`)."""


class _Worker:
    """One thread of a pool: the lock it waits on while idle, and the job it runs."""

    __slots__ = ("abandoned_since", "counted", "job", "looks", "number", "replaced", "seen", "wake")

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()  # held while idle; whoever hands it a job releases it
        self.job: Job | None = None  # the job it runs (None: idle, or not started yet)
        self.number = 0  # the job's number (the pool numbers jobs as they are taken)
        self.replaced = False  # a thread was started for the jobs queued behind this job
        self.seen = 0  # the job it was on at the last look
        self.looks = 0  # looks in a row it was found on that job
        self.counted = True  # it counts against `max_threads`
        self.abandoned_since: float | None = None  # its job was given up on (when it began)


JobRef = tuple[_Worker, int]
"""A running job, as `DaemonPool.current` names it for `DaemonPool.abandon`."""


class DaemonPool:
    """Runs jobs on an idle thread (the one idle last), on a new one while under
    `max_threads`, else in order (urgent jobs ahead of the others).

    With `call_later` (a clock's), the pool looks at its busy threads every `grow_after`
    while jobs are queued, and grows only for threads that are stuck: one new thread for
    each busy one found on the same job `STUCK_LOOKS` looks in a row (a sender waiting on
    the network, a long turn). Threads that keep taking jobs (a sender that returns at
    once) are enough: another would only cost switches under the GIL and a malloc arena.

    A job its caller gives up on (`abandon`: a sender past its timeout) keeps its thread
    until it returns, if ever; up to `max_abandoned` such threads do not count against
    `max_threads`, so that they never stop the other jobs.
    """

    def __init__(self, name: str, max_threads: int | None = None, idle_exit: float = 10.0, *,
                 call_later: CallLater | None = None, grow_after: float = 0.005,
                 max_abandoned: int = 0) -> None:
        if max_threads is not None and max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.name = name
        self.max_threads = max_threads
        self.idle_exit = idle_exit
        """Seconds an idle thread waits for work before it exits."""
        self.grow_after = grow_after
        self.max_abandoned = max_abandoned
        """Threads left to abandoned jobs that do not count against `max_threads`, at most."""
        self._lock = threading.Lock()
        self._exited = threading.Condition(self._lock)  # for `join`
        self._jobs: deque[Job] = deque()
        self._idle: list[_Worker] = []  # a stack: the last one idle is woken first
        self._workers: set[_Worker] = set()  # the threads alive but those left to abandoned jobs
        self._left: set[_Worker] = set()  # those
        self._counted = 0  # threads that count against max_threads
        self._exempt = 0  # threads in an abandoned job that do not
        self._taken = 0  # jobs taken so far: the number of the last one
        self._look = False  # a look is armed
        self._warned_at: float | None = None
        self._closed = False
        self._call_later = call_later
        self._local = threading.local()  # .worker: the calling thread's, if it is one of ours

    @property
    def threads(self) -> int:
        """Threads alive now (busy, idle, or in a job that never returned)."""
        with self._lock:
            return len(self._workers) + len(self._left)

    @property
    def idle(self) -> int:
        """Threads waiting for a job."""
        with self._lock:
            return len(self._idle)

    def run(self, job: Job, urgent: bool = False) -> None:
        """Run `job()` on a thread of the pool; its exceptions are the job's own business."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the {self.name} pool is shut down")
            if self._idle:  # none is idle while jobs are queued: the order holds
                worker = self._idle.pop()
                self._assign(worker, job)
                worker.wake.release()
                return
            if urgent:
                self._jobs.appendleft(job)
            else:
                self._jobs.append(job)
            if not self._under_cap():
                return
            if self._counted and self._call_later is not None:
                self._look_later()
            elif not self._start_thread() and not self._counted:  # nobody would ever take it
                self._jobs.remove(job)
                raise RuntimeError(f"the {self.name} pool could not start a thread")

    def _assign(self, worker: _Worker, job: Job) -> Job:
        """(Under the lock.) `worker` runs `job` next."""
        self._taken += 1
        worker.job, worker.number, worker.replaced = job, self._taken, False
        return job

    # -- growth ---------------------------------------------------------------------------------

    def _look_later(self) -> None:
        """(Under the lock.) Look at the busy threads in `grow_after`, unless a look is armed."""
        if not self._look and self._call_later is not None:
            self._look = True
            self._call_later(self.grow_after, self._grow)

    def _grow(self) -> None:
        """A thread for each stuck thread while jobs are queued, up to the cap; looks again
        while jobs stay queued.

        If a thread cannot be started (a process limit), the jobs wait for a busy thread and
        the next job queued looks again: no retry loop warning every `grow_after`."""
        with self._lock:
            self._look = False
            if self._closed or not self._jobs:
                return
            for worker in self._stuck()[:len(self._jobs)]:
                if not (self._under_cap() and self._start_thread()):
                    return
                worker.replaced = True
            if self._jobs and self._under_cap():
                self._look_later()

    def _stuck(self) -> list[_Worker]:
        """(Under the lock, at a look.) The busy threads found on the same job `STUCK_LOOKS`
        looks in a row that have no new thread for it yet."""
        stuck = []
        for worker in self._workers:
            if worker.job is None:
                continue
            worker.looks = worker.looks + 1 if worker.seen == worker.number else 1
            worker.seen = worker.number
            if worker.looks >= STUCK_LOOKS and not worker.replaced:
                stuck.append(worker)
        return stuck

    def _under_cap(self) -> bool:
        return self.max_threads is None or self._counted < self.max_threads

    def _start_thread(self) -> bool:
        """A new thread (under the lock); False if the process may start no more (RLIMIT_NPROC)."""
        worker = _Worker()
        try:
            fault_point(f"pool.start_thread.{self.name}")
            threading.Thread(target=self._work, args=(worker,), name=self.name, daemon=True).start()
        except RuntimeError:
            log.warning("pool.thread_refused", pool=self.name, threads=len(self._workers) + len(self._left))
            return False
        self._workers.add(worker)
        self._counted += 1
        return True

    # -- a thread's life ------------------------------------------------------------------------

    def _work(self, me: _Worker) -> None:
        self._local.worker = me
        while (job := self._next_job(me)) is not None:
            try:
                job()
            except BaseException:  # a job's own failure must not shrink the pool
                log.exception("pool.job_failed", pool=self.name)
            del job  # a finished job keeps nothing alive while the thread waits

    def _next_job(self, me: _Worker) -> Job | None:
        """The next job: the first queued, else one handed over while idle; None when this
        thread should exit (the pool shut down with nothing queued, or it is back from an
        abandoned job to a pool at its cap)."""
        with self._lock:
            me.job = None
            stays = me.abandoned_since is None or self._back_from_abandoned(me)
            if stays and self._jobs:
                return self._assign(me, self._jobs.popleft())
            if not stays or self._closed:
                self._leave(me)
                return None
            self._idle.append(me)
        return self._wait_for_job(me)

    def _wait_for_job(self, me: _Worker) -> Job | None:
        """Idle: the job handed over, or None after `idle_exit` without one or at `shutdown`."""
        if not me.wake.acquire(timeout=self.idle_exit):
            with self._lock:
                if me in self._idle:  # nobody handed it a job
                    self._idle.remove(me)
                    self._leave(me)
                    return None
            me.wake.acquire()  # handed one as it gave up waiting: released already
        if me.job is None:  # woken by `shutdown`
            with self._lock:
                self._leave(me)
        return me.job

    def _leave(self, me: _Worker) -> None:
        """(Under the lock.) This thread exits."""
        self._workers.discard(me)
        if me.counted:
            self._counted -= 1
        self._exited.notify_all()

    # -- abandoned jobs -------------------------------------------------------------------------

    def current(self) -> JobRef | None:
        """The job running on the calling thread if it is one of this pool's (for `abandon`)."""
        worker: _Worker | None = getattr(self._local, "worker", None)
        return None if worker is None else (worker, worker.number)

    def abandon(self, job: JobRef, since: float, now: float) -> None:
        """Its caller gives up waiting for `job` (a sender past its timeout; `since`: when it
        began, `now`: the same clock). Its thread is left to it and, within `max_abandoned`,
        no longer counts against `max_threads`: a thread is started for the jobs queued, if
        any. Past that bound it still counts, and a warning says so at most once a minute."""
        worker, number = job
        with self._lock:
            if worker.job is None or worker.number != number or worker.abandoned_since is not None:
                return  # it ended meanwhile
            worker.abandoned_since = since
            self._workers.discard(worker)
            self._left.add(worker)
            if self._exempt < self.max_abandoned:
                self._exempt_from_cap(worker)
                return
            if self._jobs and not self._closed and self._under_cap():
                self._start_thread()
            warn = self._warned_at is None or now - self._warned_at >= WARN_PAST_BOUND_EVERY
            if warn:
                self._warned_at = now
            state = self._abandoned()
        if warn:
            log.warning("pool.abandoned_past_bound", pool=self.name, abandoned=state.count,
                        bound=self.max_abandoned, counting=state.past_bound, max_threads=self.max_threads)

    def _exempt_from_cap(self, worker: _Worker) -> None:
        """(Under the lock.) `worker`'s abandoned job stops counting; the queue gets a thread."""
        worker.counted = False
        self._counted -= 1
        self._exempt += 1
        if self._jobs and not self._closed:
            self._start_thread()

    def _back_from_abandoned(self, me: _Worker) -> bool:
        """(Under the lock.) An abandoned job returned: True if its thread stays in the pool."""
        me.abandoned_since = None
        self._left.discard(me)
        self._workers.add(me)
        if me.counted:
            return True
        self._exempt -= 1
        past = next((w for w in self._left if w.counted), None)
        if past is not None:
            self._exempt_from_cap(past)  # the place it frees goes to one past the bound
        if not self._under_cap():
            return False
        me.counted = True
        self._counted += 1
        return True

    def abandoned(self) -> Abandoned:
        """The threads in a job given up on, now."""
        with self._lock:
            return self._abandoned()

    def _abandoned(self) -> Abandoned:
        since = [w.abandoned_since for w in self._left if w.abandoned_since is not None]
        return Abandoned(len(since), min(since, default=None), sum(1 for w in self._left if w.counted))

    # -- stopping -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """No more jobs are taken; threads exit once the jobs already queued have run."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.wake.release()  # with no job: it exits

    def join(self, timeout: float) -> bool:
        """After `shutdown`: wait until every thread of the pool but the caller's and those
        left to abandoned jobs has exited (its jobs done); False if some were still busy after
        `timeout` seconds."""
        with self._lock:
            mine = 1 if getattr(self._local, "worker", None) in self._workers else 0
            return self._exited.wait_for(lambda: len(self._workers) + len(self._left) - self._exempt <= mine,
                                         timeout)
