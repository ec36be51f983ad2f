"""A producer process for scenario (i): `python -m bench._producer URL COUNT INTERVAL`.

Enqueues COUNT messages through `Producer`, one transaction each, INTERVAL seconds apart,
and prints `id commit_time` per message (time.time() once the enqueue has returned: the
commit is done), then `done`.
"""

from __future__ import annotations

import sys
import time

from bench._common import host_logging, phone


def main(url: str, count: int, interval: float) -> int:
    host_logging()
    from supervisor import Producer

    with Producer(url) as producer:
        for n in range(count):
            message_id = producer.enqueue(phone=phone(n % 10), user_id=str(n), text="from a producer")
            print(message_id, time.time(), flush=True)
            time.sleep(interval)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
