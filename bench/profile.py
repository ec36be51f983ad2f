"""`python -m bench.profile [--way tell|batch|async] [--messages N] [--top N] [--all-threads] [--raw FILE]`:
where (a)'s CPU goes.

Runs `bench.where` (scenario (a)'s workload once, default settings, the bench's host
logging) under py-spy, a sampling profiler that reads the process from outside and
does not slow the code it watches, then splits the samples by whose turn they were
taken in: the writer's (`PersistenceActor`), an account's (`AccountActor`), the rest
(the supervisor, the caller's enqueues, the send threads, pykka's and the runtime's
own hand-offs between turns). For each part it prints the functions that were on the
CPU most often (self) and the ones most often on the stack (inclusive), as shares of
all the samples.

By default only the thread holding the GIL is sampled (py-spy's `--gil`): the process is
bound by the Python it runs under one lock, and a thread waiting (for a job, for mail, in
fsync) is not mistaken for one working, as py-spy's own idle detection may on some
kernels. `--all-threads` samples every thread that py-spy finds active instead.

py-spy is not one of postroom's dependencies: `pip install py-spy` (it needs to be
allowed to read another process's memory: root, or `ptrace_scope` 0). `--raw FILE`
reads an earlier recording (`py-spy record --format raw`) instead of recording.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

#: A turn is whose when one of these frames is on the stack (the first found from the top).
ROLES = (("writer", "PersistenceActor."), ("account", "AccountActor."))
_FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^:]+):(?P<line>\d+)\)$")


@dataclass
class Part:
    """The samples of one role: functions by self and inclusive count."""

    samples: int = 0
    self_count: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)


def parse(lines: Iterable[str]) -> tuple[int, dict[str, Part]]:
    """All samples, and the samples of each role (`ROLES`, and "other"), from py-spy's raw
    (collapsed) format: `thread;frame;frame;... count`, the innermost frame last."""
    total, parts = 0, {name: Part() for name, _ in (*ROLES, ("other", ""))}
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(frame) for frame in stack.split(";")[1:]]  # the first is the thread
        if not frames:
            continue
        role = next((name for name, marker in ROLES if any(f.startswith(marker) for f in frames)), "other")
        part = parts[role]
        total += count
        part.samples += count
        part.self_count[frames[-1]] += count
        for frame in set(frames):
            part.inclusive[frame] += count
    return total, parts


def _name(frame: str) -> str:
    """`function (file:line)` as `function (file)`: a function's lines counted together."""
    match = _FRAME.match(frame)
    return frame if match is None else f"{match['function']} ({match['file']})"


def record(way: str, messages: int, raw: Path, gil: bool = True) -> None:
    """`bench.where` under py-spy, its samples written to `raw` (with `gil`, only the thread
    holding the GIL)."""
    spy = shutil.which("py-spy")
    if spy is None:
        sys.exit("bench.profile needs py-spy on the PATH: pip install py-spy")
    subprocess.run([spy, "record", "--rate", "250", "--format", "raw", "--output", str(raw),
                    *(["--gil"] if gil else []), "--",
                    sys.executable, "-m", "bench.where", "--way", way, "--messages", str(messages)],
                   check=True)


def show(total: int, parts: dict[str, Part], top: int) -> None:
    console = Console()
    for name, part in parts.items():
        table = Table(title=f"{name}'s turns: {part.samples / max(1, total):.0%} of {total:,} samples")
        table.add_column("self: on the CPU")
        table.add_column("%", justify="right")
        table.add_column("inclusive: on the stack")
        table.add_column("%", justify="right")
        selves = part.self_count.most_common(top)
        inclusive = [item for item in part.inclusive.most_common(top + 8)
                     if not item[0].startswith(("_bootstrap", "run (", "Thread."))][:top]
        for index in range(max(len(selves), len(inclusive))):
            left = selves[index] if index < len(selves) else ("", 0)
            right = inclusive[index] if index < len(inclusive) else ("", 0)
            table.add_row(left[0], f"{left[1] / total:.1%}" if left[1] else "",
                          right[0], f"{right[1] / total:.1%}" if right[1] else "")
        console.print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--way", choices=("tell", "batch", "async"), default="tell")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--all-threads", action="store_true",
                        help="sample every active thread, not only the one holding the GIL")
    parser.add_argument("--raw", type=Path, help="read this py-spy raw recording instead of recording")
    args = parser.parse_args(argv)
    if args.raw is not None:
        lines = args.raw.read_text().splitlines()
    else:
        with tempfile.TemporaryDirectory() as directory:
            raw = Path(directory) / "profile.txt"
            record(args.way, args.messages, raw, gil=not args.all_threads)
            lines = raw.read_text().splitlines()
    show(*parse(lines), args.top)


if __name__ == "__main__":
    main()
