"""PostgreSQL statements that get no answer are cut: the client's half of the timeouts.

statement_timeout and lock_timeout end a statement the server runs; nothing on the server
ends one whose answer never comes back: a server or a proxy that hangs, a network path
that swallows packets while the kernel still acknowledges them. So every connection
`open_database` opens to PostgreSQL (peewee's, one per thread, and the owner lock's, which
copies their parameters) makes its cursors from a `watched_cursor` class: each statement is
noted here with its deadline, and one daemon thread shuts down the socket of a connection
whose statement is past it. The driver's read then fails at once, as when the server goes
away: the caller gets an error and the connection is replaced like any lost one.

A stop cuts earlier (`cut_calls_at`): whatever the database has not answered by then is
left to the next start.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from postroom_common.logs import get_logger

if TYPE_CHECKING:
    import psycopg

log = get_logger("postroom.storage")

#: Seconds between two looks at the statements under way.
TICK = 0.25
#: Seconds without a statement under way after which the watching thread exits (a new
#: statement starts it again).
IDLE_EXIT = 10.0
#: Rows of an executemany that share one statement's time to answer: a big broadcast is
#: written as one executemany, which the server answers row by row.
ROWS_PER_ANSWER = 10_000


class CallLimits:
    """How long the statements of one database may go unanswered."""

    def __init__(self, answer_within: float | None) -> None:
        self.answer_within = answer_within
        """Seconds a statement may wait for its answer; None: forever."""
        self.cut_at: float | None = None
        """A monotonic instant (a stop's) after which nothing is waited for."""

    def deadline(self, started: float, statements: int = 1) -> float:
        own = math.inf if self.answer_within is None else started + self.answer_within * statements
        return min(own, math.inf if self.cut_at is None else self.cut_at)


class _Call:
    __slots__ = ("connection", "cut", "limits", "started", "statements")

    def __init__(self, connection: Any, limits: CallLimits, statements: int) -> None:
        self.connection = connection
        self.limits = limits
        self.started = time.monotonic()
        self.statements = statements
        self.cut: str | None = None  # why it was cut, once it was


class _Watch:
    """The statements under way, and the thread that cuts those past their deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: set[_Call] = set()
        self._running = False

    def begin(self, connection: Any, limits: CallLimits, statements: int = 1) -> _Call:
        """Note a statement sent on `connection`; `end` it once answered, however."""
        noted = _Call(connection, limits, statements)
        with self._lock:
            self._calls.add(noted)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="postroom-watch", daemon=True).start()
        return noted

    def end(self, call: _Call) -> None:
        with self._lock:
            self._calls.discard(call)

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            time.sleep(TICK)
            now = time.monotonic()
            with self._lock:
                if self._calls:
                    idle_since = now
                elif now - idle_since > IDLE_EXIT:
                    self._running = False
                    return
                cut = [c for c in self._calls
                       if c.cut is None and c.limits.deadline(c.started, c.statements) <= now]
                for late in cut:  # under the lock: the call cannot end and free its socket meanwhile
                    late.cut = _reason(late, now)
                    _shut_down(late.connection)
            for late in cut:
                log.warning("storage.statement_cut", waited=round(now - late.started, 1), reason=late.cut)


def _reason(call: _Call, now: float) -> str:
    if call.limits.cut_at is not None and call.limits.cut_at <= now:
        return "the supervisor is stopping and the database has not answered"
    return f"the database has not answered within {call.limits.answer_within:g} s"


def _shut_down(connection: Any) -> None:
    """Shut down the connection's socket (through a duplicate of its descriptor, which the
    driver keeps and closes itself): its blocked read returns at once."""
    import psycopg

    with contextlib.suppress(OSError, psycopg.Error):  # closed meanwhile: nothing to cut
        duplicate = os.dup(connection.fileno())
        with socket.socket(fileno=duplicate) as sock:
            sock.shutdown(socket.SHUT_RDWR)


_WATCH = _Watch()


def watched_cursor(limits: CallLimits) -> type[psycopg.Cursor[Any]] | None:
    """A psycopg cursor class whose statements are cut when their answer is late (`limits`);
    None without psycopg."""
    try:
        import psycopg
    except ImportError:
        return None

    class WatchedCursor(psycopg.Cursor[Any]):
        """A cursor whose statements are cut when their answer is late (see `storage._watch`)."""

        call_limits = limits

        def execute(self, *args: Any, **kwargs: Any) -> WatchedCursor:
            call = _WATCH.begin(self.connection, self.call_limits)
            try:
                return super().execute(*args, **kwargs)
            except psycopg.OperationalError as error:
                _raise_if_cut(call, error)
                raise
            finally:
                _WATCH.end(call)

        def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
            rows = len(params_seq) if hasattr(params_seq, "__len__") else 1
            call = _WATCH.begin(self.connection, self.call_limits, max(1, math.ceil(rows / ROWS_PER_ANSWER)))
            try:
                super().executemany(query, params_seq, **kwargs)
            except psycopg.OperationalError as error:
                _raise_if_cut(call, error)
                raise
            finally:
                _WATCH.end(call)

    return WatchedCursor


def _raise_if_cut(call: _Call, error: Exception) -> None:
    """For a statement this module cut, an error that says why instead of the driver's."""
    if call.cut is not None:
        raise type(error)(f"{call.cut}: its connection was closed") from error


def cut_calls_at(connect_params: dict[str, Any], monotonic: float | None) -> None:
    """Cut every statement of the database with these connect parameters that is still
    waiting for its answer at `monotonic`, or begins after it (a stop); None: none."""
    limits = getattr(connect_params.get("cursor_factory"), "call_limits", None)
    if isinstance(limits, CallLimits):
        limits.cut_at = monotonic
