"""What every part of postroom shares and none owns: the domain values (messages, statuses,
priorities, outcomes), the one error hierarchy, the quiet logger, and the check that the
top-level names postroom installs (`supervisor`, `actors`, `storage`) are its own.

A leaf: it imports nothing of postroom, so actors and storage both build on it. Its name is
prefixed because `supervisor`, `actors` and `storage` are names other code uses too.
"""

from postroom_common.domain import (
    FINAL_STATUSES,
    OPEN_STATUSES,
    AccountPause,
    AccountView,
    Attempt,
    Change,
    ChangeKind,
    Delivery,
    Message,
    MessageFilter,
    NewBroadcast,
    NewMessage,
    NodeState,
    OpenWork,
    Outcome,
    OwnerState,
    Priority,
    QueueStats,
    Status,
    Transition,
    pause_end_text,
)
from postroom_common.errors import (
    DatabaseLocked,
    DatabaseNotFound,
    IdempotencyConflict,
    InvalidTransition,
    MessageNotFound,
    OwnershipLost,
    PostroomError,
    SchemaMismatch,
    StorageError,
    SupervisorStopped,
    ValidationError,
)
from postroom_common.imports import require_postroom_names
from postroom_common.logs import PostroomLogger, get_logger

__all__ = [
    "FINAL_STATUSES",
    "OPEN_STATUSES",
    "AccountPause",
    "AccountView",
    "Attempt",
    "Change",
    "ChangeKind",
    "DatabaseLocked",
    "DatabaseNotFound",
    "Delivery",
    "IdempotencyConflict",
    "InvalidTransition",
    "Message",
    "MessageFilter",
    "MessageNotFound",
    "NewBroadcast",
    "NewMessage",
    "NodeState",
    "OpenWork",
    "Outcome",
    "OwnerState",
    "OwnershipLost",
    "PostroomError",
    "PostroomLogger",
    "Priority",
    "QueueStats",
    "SchemaMismatch",
    "Status",
    "StorageError",
    "SupervisorStopped",
    "Transition",
    "ValidationError",
    "get_logger",
    "pause_end_text",
    "require_postroom_names",
]
