"""The running account actors by phone, shared by the supervisor and the writer.

The supervisor starts and stops accounts; the writer hands each account its new rows
itself, the moment they are committed, so that a new message reaches its running
account once and straight from the commit. A delivery is counted, and the
supervisor stops an idle account only if it handled every delivery made to it: a
row is never handed to an account that is stopping.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pykka

__all__ = ["AccountDirectory"]


@dataclass(slots=True)
class _Entry:
    ref: pykka.ActorRef[Any]
    delivered: int = 0


class AccountDirectory:
    """phone -> running account actor, and how many deliveries were made to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, phone: object) -> bool:
        with self._lock:
            return phone in self._entries

    def get(self, phone: str) -> pykka.ActorRef[Any] | None:
        with self._lock:
            entry = self._entries.get(phone)
            return None if entry is None else entry.ref

    def phones(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def add(self, phone: str, ref: pykka.ActorRef[Any]) -> None:
        """`ref` is now the account of `phone` (a new start, or a restart)."""
        with self._lock:
            self._entries[phone] = _Entry(ref)

    def remove(self, phone: str) -> pykka.ActorRef[Any] | None:
        """The account of `phone` is gone (crashed, released, stopped): no more deliveries."""
        with self._lock:
            entry = self._entries.pop(phone, None)
            return None if entry is None else entry.ref

    def remove_if(self, phone: str, urn: str) -> None:
        """Remove the account of `phone` if it is incarnation `urn` (released, or crashed)."""
        with self._lock:
            entry = self._entries.get(phone)
            if entry is not None and entry.ref.actor_urn == urn:
                del self._entries[phone]

    def deliver_to(self, phone: str) -> pykka.ActorRef[Any] | None:
        """The account to hand new rows of `phone` to, the delivery counted; None if none runs."""
        with self._lock:
            entry = self._entries.get(phone)
            if entry is None:
                return None
            entry.delivered += 1
            return entry.ref

    def retire_if_idle(self, phone: str, urn: str, deliveries_seen: int) -> pykka.ActorRef[Any] | None:
        """Remove the account of `phone` if it is incarnation `urn` and handled every delivery
        made to it; its ref then, else None (something reached it since it offered to stop)."""
        with self._lock:
            entry = self._entries.get(phone)
            if entry is None or entry.ref.actor_urn != urn or entry.delivered != deliveries_seen:
                return None
            del self._entries[phone]
            return entry.ref
