"""What a sender raises to say how an attempt went (returning means delivered).

Any other exception counts as a transient failure.
"""

from __future__ import annotations

from postroom_common.errors import PostroomError


class SendError(PostroomError):
    """The sender could not deliver the message."""


class TransientError(SendError):
    """A temporary failure: retry with backoff."""


class PermanentError(SendError):
    """The message can never be delivered (blocked, unknown chat): fail now, no retry."""


class RateLimited(SendError):
    """The platform asked to slow down: pause the whole account; the attempt is not counted."""

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        super().__init__(message or f"rate limited; retry after {retry_after} s")
        self.retry_after = float(retry_after)
        """Seconds the account must wait before its next send."""


class SendTimeout(TransientError):
    """The sender did not return within the send timeout; the outcome is unknown."""


class AccountSuspended(SendError):
    """The account itself cannot send (banned, logged out, restricted): pause the whole account."""

    def __init__(self, reason: str, retry_after: float | None = None, message: str | None = None) -> None:
        until = "until lifted" if retry_after is None else f"for {retry_after} s"
        super().__init__(message or f"account suspended ({reason}) {until}")
        self.reason = reason
        """Why, in a few words: "banned", "session revoked", "peer flood", ..."""
        self.retry_after = None if retry_after is None else float(retry_after)
        """Seconds before the account may send again; None: until a user lifts the suspension."""


class SenderReturnedAwaitable(PermanentError, TypeError):
    """The sender returned a coroutine (or another awaitable) and postroom has no event loop
    to run it on: nothing was sent. Make the sender `async def`, or start postroom with the
    bot's loop (`AsyncPostroom.start`, or `Supervisor.start(..., loop=...)`)."""
