"""What the supervisor keeps an eye on between commands: lifted pauses, and scripts draining.

Both are small state machines with no I/O: the supervisor reads the database on its
reader pool, hands the answers in here, and carries out what comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from postroom_common import AccountPause

#: Seconds between two reports of the accounts disabled until lifted.
DISABLED_REPORT_EVERY = 60.0


@dataclass
class PauseWatch:
    """Which accounts are paused, so that a pause lifted by another process (`postroom resume`)
    reaches its account, and disabled accounts are reported while they last.

    The database is the truth: the watch learns of pauses from the accounts that record them
    (`noted`) and from reads of every pause in force (`read`). A phone it believed paused that
    a read no longer shows, though its pause had not simply run out, was lifted: the account
    must read its pause again. A note that came after the read was asked for outweighs it.
    """

    _believed: dict[str, tuple[int, datetime | None]] = field(default_factory=dict)
    """phone -> (when it was last known paused, on the watch's own count; until when)."""
    _lifted: dict[str, int] = field(default_factory=dict)
    """phone -> when this process lifted its pause (`lifted_here`), on the watch's own count: a
    read asked before that may still show the pause."""
    _count: int = 0
    _reported_at: float | None = None

    def noted(self, phone: str, until: datetime | None) -> None:
        """An account recorded a pause until `until` (None: disabled until lifted)."""
        self._count += 1
        self._believed[phone] = (self._count, until)

    def lifted_here(self, phone: str) -> None:
        """This process lifted the account's pause (`ResumeAccount`): not paused any more,
        whatever a read asked before says."""
        self._count += 1
        self._believed.pop(phone, None)
        self._lifted[phone] = self._count

    def disabled(self) -> list[str]:
        """The phones believed disabled until lifted (for `GetHealth`), sorted."""
        return sorted(phone for phone, (_, until) in self._believed.items() if until is None)

    def asking(self) -> int:
        """A read of every pause in force is asked for now: the token to hand to `read`."""
        self._count += 1
        return self._count

    def read(self, pauses: Sequence[AccountPause], asked: int, now: datetime) -> list[str]:
        """The pauses in force as read after `asking()` answered `asked`: the phones lifted since."""
        current = {pause.phone: pause for pause in pauses if self._lifted.get(pause.phone, 0) <= asked}
        self._lifted = {phone: at for phone, at in self._lifted.items() if at > asked}
        lifted = []
        for phone, (known, until) in list(self._believed.items()):
            if phone in current or known > asked:
                continue
            del self._believed[phone]
            if until is None or until > now:  # gone before its end: someone lifted it
                lifted.append(phone)
        for phone, pause in current.items():
            known = self._believed.get(phone, (0, None))[0]
            self._believed[phone] = (max(known, asked), pause.until)
        return lifted

    def disabled_to_report(self, pauses: Sequence[AccountPause], monotonic: float) -> list[str]:
        """The phones disabled until lifted, when it is time to say so again (else [])."""
        disabled = sorted(pause.phone for pause in pauses if pause.until is None)
        if not disabled:
            self._reported_at = None
            return []
        if self._reported_at is not None and monotonic - self._reported_at < DISABLED_REPORT_EVERY:
            return []
        self._reported_at = monotonic
        return disabled


@dataclass(slots=True, eq=False)
class _Drain:
    reply: Callable[[], Any]
    """The request's reply, or None once its caller has let go of it (`runtime.weak_reply`)."""
    deadline: float | None
    """On the monotonic clock; None: no limit."""
    after: int | None = None
    """The number of the last count started when its write barrier came back (None: not yet):
    only a later count may find the queue empty for it, one that began after its enqueues."""


@dataclass
class DrainWaiters:
    """`Drain` commands waiting for the queue to empty, each until its deadline, or until its
    caller lets go of it: a caller that gave up (its `ask` timed out and returned) leaves no
    waiter behind to be counted for. Each drain is known by the key `add` gave it."""

    _waiting: dict[int, _Drain] = field(default_factory=dict)
    _added: int = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def add(self, reply: Callable[[], Any], deadline: float | None) -> int:
        """A new drain, waiting for its write barrier (`passed`) before any count may answer
        it; `reply()` gives its reply, or None once nobody waits for the answer. Its key."""
        self._added += 1
        self._waiting[self._added] = _Drain(reply, deadline)
        return self._added

    def passed(self, key: int, counts_started: int) -> bool:
        """Its barrier came back: the writer committed what was sent before it. False if the
        drain is no longer waiting (its deadline passed, its caller gave up, the supervisor stopped)."""
        drain = self._waiting.get(key)
        if drain is None:
            return False
        drain.after = counts_started
        return True

    def remove(self, key: int) -> Any | None:
        """Stop waiting for drain `key`: its reply, if it was waiting and someone still waits for it."""
        drain = self._waiting.pop(key, None)
        return None if drain is None else drain.reply()

    def prune(self) -> bool:
        """Forget the drains whose callers let go of them; True if any is still waited for."""
        self._waiting = {key: drain for key, drain in self._waiting.items() if drain.reply() is not None}
        return bool(self._waiting)

    def counted(self, open_messages: int, number: int, monotonic: float) -> list[Any]:
        """After count `number` of the open messages: the replies to answer with it now (the
        drains whose callers let go of them are forgotten meanwhile)."""
        answered = []
        for key, drain in list(self._waiting.items()):
            reply = drain.reply()
            if reply is None or _over(drain, open_messages, number, monotonic):
                del self._waiting[key]
                if reply is not None:
                    answered.append(reply)
        return answered

    def next_deadline(self) -> float | None:
        """The earliest deadline of those still waiting."""
        deadlines = [d.deadline for d in self._waiting.values() if d.deadline is not None]
        return min(deadlines) if deadlines else None

    def take_all(self) -> list[Any]:
        """Every reply still waited for (the supervisor is stopping, or the count failed)."""
        taken = [reply for drain in self._waiting.values() if (reply := drain.reply()) is not None]
        self._waiting = {}
        return taken


def _over(drain: _Drain, open_messages: int, number: int, monotonic: float) -> bool:
    if drain.deadline is not None and drain.deadline <= monotonic:
        return True
    return open_messages == 0 and drain.after is not None and number > drain.after
