"""An account's due messages in send order, held in a bounded window.

Order: priority (HIGH, NORMAL, LOW), then id (enqueue order). Only due messages
live here; future ones stay in the database until a timer says they are due.
When the window is full the database keeps the rest: `complete` is False until a
reload finds fewer rows than it asked for.

Reads start small and double up to `capacity`: at a boot with many accounts each
sends once before any sends twice, so a full first page per account would decode
many times the messages sent before the last account's first send (bench scenario d).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

from postroom_common import Message


class SendOrder:
    """A sorted, bounded window over an account's due messages."""

    FIRST_PAGE = 4

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.page = min(self.FIRST_PAGE, capacity)
        """Rows the next reload asks for."""
        self._keys: list[tuple[int, int]] = []
        self._messages: dict[int, Message] = {}
        self.complete = False
        """True when every due open message of the account is in the window."""

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._messages

    def offer(self, message: Message) -> bool:
        """Take a newly due message if it belongs in the window; returns whether it did."""
        if message.id in self._messages:
            return False
        if not self.complete and (not self._keys or message.order_key > self._keys[-1]):
            return False  # rows still in the database may sort first: it is loaded with them
        bisect.insort(self._keys, message.order_key)
        self._messages[message.id] = message
        if len(self._keys) > self.capacity:
            _, evicted = self._keys.pop()
            del self._messages[evicted]
            self.complete = False
        return True

    def pop_first(self, eligible: Callable[[Message], bool]) -> Message | None:
        """The first message in send order that `eligible` accepts (pacing by recipient)."""
        for index, (_, message_id) in enumerate(self._keys):
            message = self._messages[message_id]
            if eligible(message):
                del self._keys[index]
                del self._messages[message_id]
                return message
        return None

    def messages(self) -> list[Message]:
        """The window in send order."""
        return [self._messages[message_id] for _, message_id in self._keys]

    def push_back(self, message: Message) -> None:
        """Return a message that could not be attempted (it keeps its place)."""
        if message.id not in self._messages:
            bisect.insort(self._keys, message.order_key)
            self._messages[message.id] = message

    def discard(self, message_id: int) -> None:
        """Drop a message (cancelled)."""
        message = self._messages.pop(message_id, None)
        if message is not None:
            self._keys.remove(message.order_key)

    def invalidate(self) -> None:
        """Forget the window: the database has changed under it (something fell due)."""
        self._keys, self._messages, self.complete = [], {}, False

    def replace(self, window: Iterable[Message]) -> None:
        """Replace the window with a fresh read from the database, already in send order."""
        messages = list(window)
        self._messages = {m.id: m for m in messages}
        self._keys = sorted(m.order_key for m in messages)
        self.complete = len(messages) < self.page
        self.page = min(2 * self.page, self.capacity)
