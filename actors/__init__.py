"""postroom's actors and the messages they exchange.

One module per actor (`account`, `persistence`), one for the messages
(`messages`), and small pure modules for what they decide (`ordering`, `retry`,
`validation`, `privacy`) and for time (`clock`).
"""

from actors._mailbox import DeferredReplyActor, Request
from actors.account import AccountActor, AccountDeps, AccountSettings, Sender
from actors.adapters import classify, sender_with_adapters
from actors.clock import Clock, FakeClock, SystemClock, TimerHandle
from actors.errors import (
    AccountSuspended,
    PermanentError,
    RateLimited,
    SendError,
    SendTimeout,
    TransientError,
)
from actors.messages import (
    AccountFailed,
    AccountIdle,
    Advance,
    Advanced,
    Cancel,
    CancelMessage,
    Cleanup,
    CleanupNow,
    Committed,
    Deliver,
    Enqueue,
    EnqueueBatch,
    Forget,
    GetHealth,
    GetMessage,
    GetStats,
    Health,
    LiftPause,
    ListMessages,
    Persist,
    Pump,
    Recover,
    Requeue,
    RequeueMessage,
    ResumeAccount,
    RunCleanup,
    Unpause,
    Wake,
    WakeAccounts,
)
from actors.ordering import SendOrder
from actors.pacing import Pacer, Pacing
from actors.persistence import HealthState, PersistenceActor
from actors.privacy import describe_error, mask_phone
from actors.readers import ReaderPool
from actors.retry import BackoffPolicy, Decision, RandomSource, compute_backoff, decide
from actors.validation import Limits, validate_enqueue

__all__ = [
    "AccountActor",
    "AccountDeps",
    "AccountFailed",
    "AccountIdle",
    "AccountSettings",
    "AccountSuspended",
    "Advance",
    "Advanced",
    "BackoffPolicy",
    "Cancel",
    "CancelMessage",
    "Cleanup",
    "CleanupNow",
    "Clock",
    "Committed",
    "Decision",
    "DeferredReplyActor",
    "Deliver",
    "Enqueue",
    "EnqueueBatch",
    "FakeClock",
    "Forget",
    "GetHealth",
    "GetMessage",
    "GetStats",
    "Health",
    "HealthState",
    "LiftPause",
    "Limits",
    "ListMessages",
    "Pacer",
    "Pacing",
    "PermanentError",
    "Persist",
    "PersistenceActor",
    "Pump",
    "RandomSource",
    "RateLimited",
    "ReaderPool",
    "Recover",
    "Request",
    "Requeue",
    "RequeueMessage",
    "ResumeAccount",
    "RunCleanup",
    "SendError",
    "SendOrder",
    "SendTimeout",
    "Sender",
    "SystemClock",
    "TimerHandle",
    "TransientError",
    "Unpause",
    "Wake",
    "WakeAccounts",
    "classify",
    "compute_backoff",
    "decide",
    "describe_error",
    "mask_phone",
    "sender_with_adapters",
    "validate_enqueue",
]
