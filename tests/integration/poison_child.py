"""A child process whose sender kills it on one message (a poison message).

`python -m tests.integration.poison_child <sqlite file>` starts a supervisor on the
file, enqueues `PLAN` (idempotency keys, so a restarted child re-enqueues nothing),
and waits until no row is open. Its sender SIGKILLs the whole process when it is
handed the text "poison"; every other message is delivered. On a clean finish it
prints `DRAINED` and exits 0.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: (phone, text): the poison message sits between ordinary ones of its account.
PLAN = [
    ("+15550100", "a1"),
    ("+15550100", "poison"),
    ("+15550100", "a2"),
    ("+15550200", "b1"),
    ("+15550100", "a3"),
    ("+15550200", "b2"),
    ("+15550300", "c1"),
]
MAX_ATTEMPTS = 3


def poison_sender(message: object) -> None:
    """Delivers everything but "poison", which takes the process down with it."""
    if getattr(message, "text", None) == "poison":
        os.kill(os.getpid(), signal.SIGKILL)


def main(database_file: str) -> int:
    sys.path.insert(0, str(ROOT))
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    from supervisor import (
        AccountSettings,
        Enqueue,
        GetStats,
        Status,
        Supervisor,
        SupervisorSettings,
    )

    settings = SupervisorSettings(account=AccountSettings(idle_timeout=None))
    ref = Supervisor.start(database=f"sqlite:///{database_file}", sender=poison_sender,
                           settings=settings)
    for index, (phone, text) in enumerate(PLAN):
        ref.ask(Enqueue(phone=phone, user_id=f"user-{index}", text=text,
                        max_attempts=MAX_ATTEMPTS, idempotency_key=f"poison-plan-{index}"))
    open_states = (Status.PENDING, Status.RETRYING, Status.PROCESSING)
    deadline = time.monotonic() + 60
    while any(ref.ask(GetStats()).by_status[s] for s in open_states):
        if time.monotonic() > deadline:
            ref.stop()
            return 2
        time.sleep(0.02)  # a child polling its own queue, not a test waiting for an outcome
    ref.stop()
    print("DRAINED", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
