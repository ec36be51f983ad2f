"""A child process whose sender kills it on one message (a poison message).

`python -m tests.integration.poison_child <sqlite file> [--bystander]` starts a
supervisor on the file, enqueues its plan (idempotency keys, so a restarted child
re-enqueues nothing), and waits until no row is open. Its sender SIGKILLs the whole
process when it is handed the text "poison"; every other message is delivered. On a
clean finish it prints `DRAINED` and exits 0.

`PLAN` keeps the poison's neighbours on its own account, so the poison is the only
message in flight when the process dies. `BYSTANDER_PLAN` adds a message on another
account whose (slow) send is under way whenever the poison kills the process.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
POISON_PHONE = "+15550100"

#: (phone, text): the poison sits between ordinary messages of its own account.
PLAN = [(POISON_PHONE, text) for text in ("a1", "poison", "a2", "a3", "a4")]
#: The poison and a bystander on another account, in flight together at every death.
BYSTANDER_PLAN = [(POISON_PHONE, "poison"), ("+15550200", "bystander")]
MAX_ATTEMPTS = 3


def make_sender(with_bystander: bool) -> Callable[[object], None]:
    """Delivers everything but "poison", which takes the process down with it."""
    bystander_inside = threading.Event()
    never = threading.Event()

    def send(message: object) -> None:
        text = getattr(message, "text", None)
        if text == "bystander":
            bystander_inside.set()
            never.wait(3)  # a slow send, still under way when the poison strikes
        elif text == "poison":
            if with_bystander:
                bystander_inside.wait(10)
            os.kill(os.getpid(), signal.SIGKILL)

    return send


def main(database_file: str, with_bystander: bool) -> int:
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
    ref = Supervisor.start(database=f"sqlite:///{database_file}",
                           sender=make_sender(with_bystander), settings=settings)
    plan = BYSTANDER_PLAN if with_bystander else PLAN
    for index, (phone, text) in enumerate(plan):
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
    raise SystemExit(main(sys.argv[1], with_bystander="--bystander" in sys.argv[2:]))
