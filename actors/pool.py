"""A pool of daemon threads that grows on demand, up to an optional cap, and shrinks when idle.

Two parts of postroom need one: the sends (a thread per send running at once, so a
sender that hangs never delays another account) and the account actors' turns (a
few threads shared by every account, so 10,000 accounts do not cost 10,000 threads).
The threads are daemons: a sender hung forever must not keep the process alive
(`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from actors._faults import fault_point
from postroom_common.logs import get_logger

log = get_logger("postroom.pool")

Job = Callable[[], None]


class DaemonPool:
    """Runs jobs on an idle thread, on a new one while under `max_threads`, else in order."""

    def __init__(self, name: str, max_threads: int | None = None, idle_exit: float = 10.0) -> None:
        if max_threads is not None and max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.name = name
        self.max_threads = max_threads
        self.idle_exit = idle_exit
        """Seconds an idle thread waits for work before it exits."""
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job and not yet promised one
        self._queued = 0  # jobs waiting for a thread (only at the cap)
        self._threads = 0
        self._closed = False

    @property
    def threads(self) -> int:
        """Threads alive now (busy, idle, or stuck in a job that never returned)."""
        with self._lock:
            return self._threads

    def run(self, job: Job) -> None:
        """Run `job()` on a thread of the pool; its exceptions are the job's own business."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the {self.name} pool is shut down")
            if self._idle:
                self._idle -= 1  # promised now, so two jobs never count on one idle thread
            elif not (self._under_cap() and self._start_thread()):
                if not self._threads:
                    raise RuntimeError(f"the {self.name} pool could not start a thread")
                self._queued += 1  # at the cap, or refused a thread: the next one free takes it
        self._jobs.put(job)

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
        """Idle threads exit now; busy ones exit when their job returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.idle_exit)
            except queue.Empty:
                with self._lock:
                    if self._idle == 0:
                        continue  # a job has just been promised to this thread: it is coming
                    self._idle -= 1
                    self._threads -= 1
                return
            if job is None:
                with self._lock:
                    self._threads -= 1
                return
            try:
                job()
            except BaseException:  # a job's own failure must not shrink the pool
                log.exception("pool.job_failed", pool=self.name)
            del job  # a finished job keeps nothing alive while the thread waits
            with self._lock:
                if self._closed:
                    self._threads -= 1
                    return
                if self._queued:
                    self._queued -= 1  # take a job that waited at the cap
                else:
                    self._idle += 1
