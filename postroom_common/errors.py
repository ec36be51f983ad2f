"""The one error hierarchy of postroom.

A leaf module: it imports nothing, so every layer can raise and catch these.
The docstring of each class is its default message.
"""

from __future__ import annotations


class PostroomError(Exception):
    """A postroom error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ValidationError(PostroomError, ValueError):
    """The command is invalid; nothing was written."""


class IdempotencyConflict(ValidationError):
    """The idempotency key was already used for a different message."""


class StorageError(PostroomError):
    """The database failed; the operation was not committed."""


class MessageNotFound(PostroomError, LookupError):
    """No message has this id."""


class InvalidTransition(PostroomError):
    """The message is not in a status that allows this operation."""


class SupervisorStopped(PostroomError):
    """The supervisor is stopping and accepts no new work."""


class DatabaseLocked(PostroomError):
    """Another supervisor already owns this database (SQLite file or PostgreSQL database)."""


class DatabaseNotFound(PostroomError, LookupError):
    """There is no database at this URL (and none was created)."""


class SchemaMismatch(StorageError):
    """The database's schema is not the version this postroom uses: `postroom migrate`
    upgrades an older one; a newer one needs a newer postroom. Nothing was written."""


class OwnershipLost(StorageError):
    """This supervisor no longer owns its database (its SQLite file was deleted or replaced):
    every write is refused until it is restarted."""


class EncryptionKeyError(PostroomError):
    """The encryption keys given (POSTROOM_ENCRYPTION_KEYS) cannot read this database's
    messages, or are not keys: nothing was read or written."""
