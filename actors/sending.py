"""Threads that run the user's sender when a send timeout is set, shared by every account,
and the watch over the sends under way.

An account must be able to give up on a sender that hangs, and Python cannot interrupt
a call: the call runs on another thread, and the account stops waiting for it. The pool
grows with the sends running at once up to its cap (`send_threads`: thousands of accounts
with a slow sender must not cost thousands of threads), reuses idle threads and lets idle
ones exit. An `async def` sender needs none of it: it runs on the bot's loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from actors.pool import DaemonPool


class SendPool(DaemonPool):
    """A `DaemonPool` whose jobs answer through a future; past `max_threads`, sends wait in
    order for a thread (a send's timeout counts only once it has begun)."""

    def __init__(self, max_threads: int | None = None, idle_exit: float = 10.0) -> None:
        super().__init__("postroom-send", max_threads, idle_exit)

    def submit(self, call: Callable[[Any], Any], argument: Any,
               on_begin: Callable[[Future[Any]], None] | None = None) -> Future[Any]:
        """Run `call(argument)` on an idle thread, a new one under the cap, or the first one
        free; `on_begin(future)` is called on that thread just before (a timeout counts from it)."""
        future: Future[Any] = Future()

        def send() -> None:
            if future.set_running_or_notify_cancel():
                if on_begin is not None:
                    on_begin(future)
                try:
                    future.set_result(call(argument))
                except BaseException as error:  # noqa: BLE001 - every outcome goes to the account
                    future.set_exception(error)

        self.run(send)
        return future


class SendWatch:
    """Which accounts have a send under way, and since when: `GetHealth` names those whose
    send has run too long (a sender that hangs with no send timeout)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}

    def started(self, phone: str, monotonic: float) -> None:
        with self._lock:
            self._since[phone] = monotonic

    def ended(self, phone: str) -> None:
        with self._lock:
            self._since.pop(phone, None)

    def running_longer_than(self, seconds: float, monotonic: float) -> list[str]:
        """The phones whose send began more than `seconds` ago, longest first."""
        with self._lock:
            return sorted((p for p, t in self._since.items() if monotonic - t > seconds),
                          key=self._since.__getitem__)
