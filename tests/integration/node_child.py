"""A node in its own process: `python -m tests.integration.node_child URL LOG NAME LEASE MOVES`.

It starts a supervisor as a node of several (`NodeSettings(lease=LEASE, max_moves=MOVES)`),
prints `started`,
and sends through a sender that takes `SEND_TIME` and appends
`NAME <id> <attempt> <phone> <start> <end>` (time.time()) to LOG once the send has ended. It
stops gracefully on SIGTERM (exit 0) or when its stdin closes; the test may SIGKILL or
SIGSTOP it instead.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Seconds each send takes: long enough that sends of two nodes for one account would overlap.
SEND_TIME = 0.05


def main(url: str, log_path: str, name: str, lease: float, max_moves: int) -> int:
    sys.path.insert(0, str(ROOT))
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is ours
    from supervisor import AccountSettings, Message, NodeSettings, Supervisor, SupervisorSettings

    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - open until the process ends
    lock = threading.Lock()

    def send(message: Message) -> None:
        began = time.time()
        time.sleep(SEND_TIME)
        with lock:
            log.write(f"{name} {message.id} {message.attempts} {message.phone} {began} {time.time()}\n")

    settings = SupervisorSettings(nodes=NodeSettings(lease=lease, max_moves=max_moves),
                                  feed_poll_interval=0.05, account=AccountSettings(idle_timeout=None))
    ref = Supervisor.start(database=url, sender=send, settings=settings)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print("started", flush=True)
    done.wait()
    ref.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])))
