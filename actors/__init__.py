"""postroom's actors and the messages they exchange.

The runtime every actor runs on (`runtime`); one module per actor (`account`, the
shell around its pure `account_machine`; `persistence`, the writer) and the supervisor's
helpers (`directory`, `watches`); the messages (`messages`); and the small pure modules
of what they decide (`ordering`, `pacing`, `retry`, `validation`, `privacy`,
`adapters`), of time (`clock`), of threads (`pool`, `sending`) and of senders (`aio`,
`errors`).
"""

from postroom_common import require_postroom_names

require_postroom_names("storage")  # before any import of it: a clear error if another file took the name

from actors.account import AccountActor, AccountDeps
from actors.account_machine import AccountMachine, AccountSettings, AccountState
from actors.adapters import classify, sender_with_adapters
from actors.aio import Sender
from actors.clock import Clock, FakeClock, SystemClock, TimerHandle
from actors.errors import (
    AccountSuspended,
    PermanentError,
    RateLimited,
    SenderReturnedAwaitable,
    SendError,
    SendTimeout,
    TransientError,
)
from actors.messages import (
    AccountCrashed,
    AccountIdle,
    AccountPaused,
    AccountReleased,
    Arrived,
    BatchKind,
    Broadcast,
    Cancelled,
    CancelMessage,
    CancelRow,
    CleanupDue,
    CleanupNow,
    DeleteFinished,
    Drain,
    DrainCheckDue,
    Enqueue,
    EnqueueBatch,
    GetHealth,
    GetMessage,
    GetStats,
    Health,
    Insert,
    LiftPause,
    ListMessages,
    OpenCounted,
    PauseCheckDue,
    PauseLifted,
    PausesRead,
    ReadPauseAgain,
    RecordAndClaim,
    Recorded,
    Release,
    RequeueMessage,
    RequeueRow,
    ResumeAccount,
    SettleInFlight,
    SleepersDue,
    StartAccountsFor,
    SuspectSettled,
)
from actors.ordering import SendOrder
from actors.pacing import Pacer, Pacing
from actors.persistence import HealthState, PersistenceActor
from actors.privacy import describe_error, mask_phone
from actors.retry import BackoffPolicy, Decision, Next, RandomSource, compute_backoff, decide
from actors.runtime import Answer, Reply, TurnActor, TurnPool
from actors.validation import Limits, validate_broadcast, validate_enqueue, validate_enqueues

__all__ = [
    "AccountActor",
    "AccountCrashed",
    "AccountDeps",
    "AccountIdle",
    "AccountMachine",
    "AccountPaused",
    "AccountReleased",
    "AccountSettings",
    "AccountState",
    "AccountSuspended",
    "Answer",
    "Arrived",
    "BackoffPolicy",
    "BatchKind",
    "Broadcast",
    "CancelMessage",
    "CancelRow",
    "Cancelled",
    "CleanupDue",
    "CleanupNow",
    "Clock",
    "Decision",
    "DeleteFinished",
    "Drain",
    "DrainCheckDue",
    "Enqueue",
    "EnqueueBatch",
    "FakeClock",
    "GetHealth",
    "GetMessage",
    "GetStats",
    "Health",
    "HealthState",
    "Insert",
    "LiftPause",
    "Limits",
    "ListMessages",
    "Next",
    "OpenCounted",
    "Pacer",
    "Pacing",
    "PauseCheckDue",
    "PauseLifted",
    "PausesRead",
    "PermanentError",
    "PersistenceActor",
    "RandomSource",
    "RateLimited",
    "ReadPauseAgain",
    "RecordAndClaim",
    "Recorded",
    "Release",
    "Reply",
    "RequeueMessage",
    "RequeueRow",
    "ResumeAccount",
    "SendError",
    "SendOrder",
    "SendTimeout",
    "Sender",
    "SenderReturnedAwaitable",
    "SettleInFlight",
    "SleepersDue",
    "StartAccountsFor",
    "SuspectSettled",
    "SystemClock",
    "TimerHandle",
    "TransientError",
    "TurnActor",
    "TurnPool",
    "classify",
    "compute_backoff",
    "decide",
    "describe_error",
    "mask_phone",
    "sender_with_adapters",
    "validate_broadcast",
    "validate_enqueue",
    "validate_enqueues",
]
