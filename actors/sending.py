"""Threads that run the user's sender when a send timeout is set, shared by every account.

An account must be able to give up on a sender that hangs, and Python cannot interrupt
a call: the call runs on another thread, and the account stops waiting for it. One
thread per account doubled the threads of a boot with 10,000 accounts; this pool grows
only to the number of sends running at once, reuses idle threads, lets idle ones exit,
and uses daemon threads, so that a sender hung forever never keeps the process alive
(`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_Job = tuple[Future[Any], Callable[[Any], Any], Any] | None


class SendPool:
    """A pool that starts a thread whenever every thread it has is busy (none is ever queued)."""

    def __init__(self, idle_exit: float = 60.0) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._closed = False
        self.idle_exit = idle_exit
        """Seconds an idle thread waits for work before it exits."""

    @property
    def threads(self) -> int:
        """Threads alive now (busy, idle, or stuck in a sender that never returned)."""
        with self._lock:
            return self._threads

    def submit(self, call: Callable[[Any], Any], argument: Any) -> Future[Any]:
        """Run `call(argument)` at once on an idle thread, or on a new one."""
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the send pool is shut down")
            if self._idle:
                self._idle -= 1  # taken now, so two submits never count on one idle thread
            else:
                self._threads += 1
                threading.Thread(target=self._work, name="postroom-send", daemon=True).start()
        self._jobs.put((future, call, argument))
        return future

    def shutdown(self) -> None:
        """Idle threads exit now; busy ones exit when their send returns."""
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
                        continue  # a submit has just counted on this thread: its job is coming
                    self._idle -= 1
                    self._threads -= 1
                return
            if job is None:
                with self._lock:
                    self._threads -= 1
                return
            future, call, argument = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call(argument))
                except BaseException as error:  # noqa: BLE001 - every outcome goes to the account
                    future.set_exception(error)
            del job, future, call, argument  # a finished send keeps nothing alive while idle
            with self._lock:
                if self._closed:
                    self._threads -= 1
                    return
                self._idle += 1
