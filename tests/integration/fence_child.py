"""A supervisor in its own process that sends for a while and logs each send:
`python -m tests.integration.fence_child URL LOG ACCOUNTS MESSAGES`.

It enqueues MESSAGES over ACCOUNTS accounts, prints `started`, and sends them through a
sender that takes a few milliseconds and appends `A <id> <attempt> <time.time()>` to LOG
as the send begins. It runs until the test kills it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Seconds each send takes: long enough that the test can act while the queue is busy.
SEND_TIME = 0.02


def main(url: str, log_path: str, accounts: int, messages: int) -> int:
    sys.path.insert(0, str(ROOT))
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is ours
    from supervisor import Enqueue, EnqueueBatch, Message, Supervisor

    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - open until the process is killed

    def send(message: Message) -> None:
        log.write(f"A {message.id} {message.attempts} {time.time()}\n")
        time.sleep(SEND_TIME)

    ref = Supervisor.start(database=url, sender=send)
    batch = [Enqueue(phone=f"+1555{i % accounts:07d}", user_id=str(i), text="x") for i in range(messages)]
    ref.ask(EnqueueBatch(batch))
    print("started", flush=True)
    sys.stdin.read()  # until the test kills us
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
