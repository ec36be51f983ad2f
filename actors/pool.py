"""A pool of daemon threads that grows on demand, up to an optional cap, and shrinks when idle.

Two parts of postroom need one: the sends (a thread per send running at once, so a
sender that hangs never delays another account) and the account actors' turns (a
few threads shared by every account, so 10,000 accounts do not cost 10,000 threads).
The threads are daemons: a sender hung forever must not keep the process alive
(`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from actors._faults import fault_point
from postroom_common.logs import get_logger

log = get_logger("postroom.pool")

Job = Callable[[], None]
CallLater = Callable[[float, Job], object]
"""A clock's `call_later`: run a job after so many seconds, on the timer thread."""


class DaemonPool:
    """Runs jobs on an idle thread, on a new one while under `max_threads`, else in order
    (urgent jobs ahead of the others).

    With `call_later` (a clock's), a job that finds every thread busy waits `grow_after`
    for one of them before the pool grows: the busy ones are usually about to finish (a
    sender that returns at once), and every extra thread costs switches under the GIL;
    threads that are slow (a sender waiting on the network) make the jobs queued behind
    them wait only that long before each gets a thread of its own.
    """

    def __init__(self, name: str, max_threads: int | None = None, idle_exit: float = 10.0, *,
                 call_later: CallLater | None = None,
                 grow_after: float = 0.005) -> None:
        if max_threads is not None and max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.name = name
        self.max_threads = max_threads
        self.idle_exit = idle_exit
        """Seconds an idle thread waits for work before it exits."""
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._idle = 0  # threads waiting for a job
        self._threads = 0
        self._members: set[int] = set()  # the idents of its threads
        self._closed = False
        self._call_later = call_later
        self.grow_after = grow_after
        self._growth_due = False  # a look at the queue is armed

    @property
    def threads(self) -> int:
        """Threads alive now (busy, idle, or stuck in a job that never returned)."""
        with self._cond:
            return self._threads

    def run(self, job: Job, urgent: bool = False) -> None:
        """Run `job()` on a thread of the pool; its exceptions are the job's own business."""
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the {self.name} pool is shut down")
            if urgent:
                self._jobs.appendleft(job)
            else:
                self._jobs.append(job)
            wanted = len(self._jobs) > self._idle and self._under_cap()
            if wanted and self._threads and self._call_later is not None:
                self._grow_later()
            elif wanted and not self._start_thread() and not self._threads:  # nobody would ever take it
                self._jobs.remove(job)
                raise RuntimeError(f"the {self.name} pool could not start a thread")
            self._cond.notify()

    def _grow_later(self) -> None:
        """(Under the lock.) Look again in `grow_after`, unless a look is already armed."""
        if not self._growth_due and self._call_later is not None:
            self._growth_due = True
            self._call_later(self.grow_after, self._grow)

    def _grow(self) -> None:
        """A thread for every job still waiting for one after `grow_after` (up to the cap).

        If one cannot be started (a process limit), the jobs wait for a busy thread and the
        next job queued looks again, as without a clock: no retry loop warning every
        `grow_after`."""
        with self._cond:
            self._growth_due = False
            if self._closed:
                return
            waiting = len(self._jobs) - self._idle
            while waiting > 0 and self._under_cap() and self._start_thread():
                waiting -= 1

    def _under_cap(self) -> bool:
        return self.max_threads is None or self._threads < self.max_threads

    def _start_thread(self) -> bool:
        """A new thread (under the lock); False if the process may start no more (RLIMIT_NPROC)."""
        try:
            fault_point(f"pool.start_thread.{self.name}")
            threading.Thread(target=self._work, name=self.name, daemon=True).start()
        except RuntimeError:
            log.warning("pool.thread_refused", pool=self.name, threads=self._threads)
            return False
        self._threads += 1
        return True

    def shutdown(self) -> None:
        """No more jobs are taken; threads exit once the jobs already queued have run."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _work(self) -> None:
        with self._cond:
            self._members.add(threading.get_ident())
        while (job := self._next_job()) is not None:
            try:
                job()
            except BaseException:  # a job's own failure must not shrink the pool
                log.exception("pool.job_failed", pool=self.name)
            del job  # a finished job keeps nothing alive while the thread waits

    def _next_job(self) -> Job | None:
        """The next job, or None when this thread should exit: idle for `idle_exit`, or the
        pool shut down with nothing left to run."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._idle += 1
                woken = self._cond.wait(self.idle_exit)
                self._idle -= 1
                if not woken and not self._jobs:
                    break
            if self._jobs:
                return self._jobs.popleft()
            self._threads -= 1
            self._members.discard(threading.get_ident())
            self._cond.notify_all()  # for `join`
            return None

    def join(self, timeout: float) -> bool:
        """After `shutdown`: wait until every thread of the pool but the caller's has exited
        (its jobs done); False if some were still busy after `timeout` seconds."""
        with self._cond:
            mine = 1 if threading.get_ident() in self._members else 0
            return self._cond.wait_for(lambda: self._threads <= mine, timeout)
