"""The child process's entry: `python -m bench._run boot|work '<json args>'` (see `bench._child`).

A module of its own, imported by nobody, so that running it as __main__ never
duplicates a module the package already imported.
"""

from __future__ import annotations

import json
import os
import sys

from bench._child import boot, rounds, sleeping_boot, work
from bench._common import host_logging


def main() -> None:
    host_logging()
    task, args = sys.argv[1], json.loads(sys.argv[2])
    result = {"boot": boot, "rounds": rounds, "sleeping_boot": sleeping_boot, "work": work}[task](args)
    print(json.dumps(result), flush=True)
    os._exit(0)  # leftover daemon threads (10,000 actors) need not be joined


if __name__ == "__main__":
    main()
