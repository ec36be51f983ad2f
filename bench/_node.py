"""A sending process for scenario (l): `python -m bench._node URL MODE`.

MODE `single` runs one supervisor without nodes, `node` one node of several
(`SupervisorSettings(nodes=NodeSettings())`); both with default settings otherwise, a
no-op sender and logs as a host that wants warnings configures them. Prints `ready` once
started, then runs until its standard input is closed, and stops gracefully.
"""

from __future__ import annotations

import sys

from bench._common import host_logging


def main(url: str, mode: str) -> int:
    host_logging()
    from supervisor import NodeSettings, Supervisor, SupervisorSettings

    settings = SupervisorSettings(nodes=NodeSettings()) if mode == "node" else SupervisorSettings()
    ref = Supervisor.start(database=url, sender=lambda message: None, settings=settings)
    print("ready", flush=True)
    sys.stdin.read()  # until the benchmark closes it
    ref.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
