"""postroom's storage layer: the peewee schema, opening a database by URL, the queries.

No actors here; peewee never leaves this package (callers get `Message` values).
"""

from storage.database import SqliteSettings, open_database
from storage.domain import (
    FINAL_STATUSES,
    OPEN_STATUSES,
    AccountPause,
    AccountView,
    Delivery,
    Message,
    NewBroadcast,
    NewMessage,
    Priority,
    QueueStats,
    Status,
    pause_end_text,
)
from storage.errors import (
    DatabaseLocked,
    DatabaseNotFound,
    IdempotencyConflict,
    InvalidTransition,
    MessageNotFound,
    OwnershipLost,
    PostroomError,
    StorageError,
    SupervisorStopped,
    ValidationError,
)
from storage.owner import OwnerLock
from storage.store import Storage, Transition

__all__ = [
    "FINAL_STATUSES",
    "OPEN_STATUSES",
    "AccountPause",
    "AccountView",
    "DatabaseLocked",
    "DatabaseNotFound",
    "Delivery",
    "IdempotencyConflict",
    "InvalidTransition",
    "Message",
    "MessageNotFound",
    "NewBroadcast",
    "NewMessage",
    "OwnerLock",
    "OwnershipLost",
    "PostroomError",
    "Priority",
    "QueueStats",
    "SqliteSettings",
    "Status",
    "Storage",
    "StorageError",
    "SupervisorStopped",
    "Transition",
    "ValidationError",
    "open_database",
    "pause_end_text",
]
