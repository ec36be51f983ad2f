"""A child process that tries to own a database: `python -m tests.integration.owner_child URL [--go]`.

It prints `ready` once its imports are done; with `--go` it then waits for a line on
stdin, so that several children start at the same instant. Then it starts a supervisor
and prints `started`, or `locked` (DatabaseLocked), or `error <type>: <text>` and exits.
A started child owns the database until its stdin closes, then stops cleanly.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(url: str, wait_for_go: bool) -> int:
    sys.path.insert(0, str(ROOT))
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is ours
    from supervisor import DatabaseLocked, Supervisor

    print("ready", flush=True)
    if wait_for_go:
        sys.stdin.readline()
    try:
        ref = Supervisor.start(database=url, sender=lambda message: None)
    except DatabaseLocked:
        print("locked", flush=True)
        return 0
    except Exception as error:  # noqa: BLE001 - reported to the test, which fails on it
        print(f"error {type(error).__name__}: {error}".replace("\n", " "), flush=True)
        return 1
    print("started", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)
    ref.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], wait_for_go="--go" in sys.argv[2:]))
