"""A producer in its own process: `python -m tests.integration.producer_child URL TAG COUNT`.

It enqueues COUNT messages (user_id `TAG-n`) over a few accounts, one transaction each,
prints each id as it is answered, then `done`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(url: str, tag: str, count: int) -> int:
    sys.path.insert(0, str(ROOT))
    from supervisor import Producer

    with Producer(url) as producer:
        for n in range(count):
            print(producer.enqueue(phone=f"+1555000{n % 3}", user_id=f"{tag}-{n}", text="hi"), flush=True)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
