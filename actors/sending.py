"""Threads that run the user's sender when a send timeout is set, shared by every account.

An account must be able to give up on a sender that hangs, and Python cannot interrupt
a call: the call runs on another thread, and the account stops waiting for it. The pool
grows only to the number of sends running at once (none ever waits behind another
account's send), reuses idle threads and lets idle ones exit.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from actors.pool import DaemonPool


class SendPool(DaemonPool):
    """An uncapped `DaemonPool` whose jobs answer through a future."""

    def __init__(self, idle_exit: float = 60.0) -> None:
        super().__init__("postroom-send", None, idle_exit)

    def submit(self, call: Callable[[Any], Any], argument: Any) -> Future[Any]:
        """Run `call(argument)` at once on an idle thread, or on a new one."""
        future: Future[Any] = Future()

        def send() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call(argument))
                except BaseException as error:  # noqa: BLE001 - every outcome goes to the account
                    future.set_exception(error)

        self.run(send)
        return future
