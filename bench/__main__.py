"""`python -m bench [--quick] [--runs N] [--scenarios a,b,...] [--systems ...] [sizes] [--json PATH]`.

Exit code 0 when every selected run of every system ran (whatever the figures), 1 when
one failed (it is named under the table): CI runs `--quick` to keep the benchmark
alive, never to judge a speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench._child import ROOT, fsync_counter
from bench._common import host_logging
from bench.report import Figure, print_report, write_json
from bench.scenarios import ALL_SYSTEMS, QUICK, ROUND_IDLE, SCENARIOS, Params

_SIZES = ("messages", "accounts", "batch", "enqueue_messages", "enqueue_threads", "bulk_messages", "rate",
          "latency_seconds", "producers", "boot_rows", "boot_accounts", "busy_accounts", "busy_backlog",
          "work_messages", "cleanup_rows", "sleeping_accounts", "settle", "rounds", "round_accounts",
          "boot_timeout", "produced", "idle_seconds", "timeout")


def parse(argv: list[str] | None = None) -> tuple[Params, list[str], Path | None]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 run (what CI executes)")
    parser.add_argument("--runs", type=int, help="runs per system; figures are medians (default 3, quick 1)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated letters (default all)")
    parser.add_argument("--systems", default=",".join(ALL_SYSTEMS),
                        help="comma-separated systems to run (default all: "
                        "postroom,nodb,chain,floor,seed,huey; nodb, chain and floor run in (a) only)")
    parser.add_argument("--json", type=Path, help="also write every figure and run to this file")
    for name in _SIZES:
        default = getattr(Params(), name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default),
                            help=f"default {default:,} (quick {getattr(QUICK, name):,})")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else Params()
    chosen = {n: getattr(args, n) for n in (*_SIZES, "runs") if getattr(args, n) is not None}
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    unknown = [s for s in scenarios if s not in SCENARIOS] + [s for s in systems if s not in ALL_SYSTEMS]
    if unknown:
        parser.error(f"unknown {unknown}; scenarios are {','.join(SCENARIOS)}, "
                     f"systems {','.join(ALL_SYSTEMS)}")
    return dataclasses.replace(base, systems=systems, **chosen), scenarios, args.json


def main(argv: list[str] | None = None) -> int:
    params, scenarios, json_path = parse(argv)
    host_logging()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    figures: list[Figure] = []
    errors: list[str] = []
    for letter in scenarios:
        print(f"scenario ({letter}) ...", file=sys.stderr, flush=True)
        begun = time.perf_counter()
        try:
            figures += SCENARIOS[letter](params)
        except Exception as error:  # noqa: BLE001 - reported, the other scenarios still run
            traceback.print_exc()
            errors.append(f"({letter}) {type(error).__name__}: {error}")
        print(f"scenario ({letter}) took {time.perf_counter() - begun:.1f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    errors += sorted({f"({f.scenario}) {failure}" for f in figures for failure in f.failures})
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    notes = _notes(params, seconds, load) + [f"FAILED {e}" for e in errors]
    print_report(figures, notes)
    if json_path is not None:
        write_json(json_path, figures, notes, dataclasses.asdict(params), errors, seconds)
    return 1 if errors else 0


def _revision() -> str:
    """The commit measured, `+dirty` when the tree has changes (the core moves between runs)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def _notes(p: Params, seconds: float, load: str) -> list[str]:
    return [
        f"{p.runs} run(s) per system, medians; whole benchmark {seconds:.0f} s; postroom at {_revision()} "
        f"on {os.cpu_count()} CPUs ({load}: other work on the machine skews absolute figures more than "
        "ratios). SQLite synchronous=FULL, WAL, everywhere; every run on a fresh file in a fresh temp "
        "directory.",
        "Logs, for every system, in the parent and in every child process: as a host that wants only "
        "warnings configures them (bench._common.host_logging): stdlib logging at WARNING and structlog "
        "with a filtering bound logger at WARNING, warnings on stderr.",
        "postroom and no-db: default settings (SupervisorSettings()) and a no-op sender in every "
        "scenario, with one exception: (g) paces every account (Pacing(rate, burst=1)) to send a "
        "steady 1,000 msg/s. (b) schedules its messages a day ahead (a field of each message, not a "
        "setting) so that only the enqueue path runs.",
        f"(a) postroom, no-db, chain and floor run three ways: one ref.tell(Enqueue) per message with a "
        f"plain sender; EnqueueBatch of {p.batch:,} asked one after another with a plain sender; "
        f"`await room.enqueue_batch(...)` of {p.batch:,} through AsyncPostroom with an async def "
        "sender, on an asyncio loop in a thread of its own. seed and huey run once per round (each "
        "enqueue one commit) and all three rows compare with those runs. 'of no-db': postroom / "
        "no-db, the share of its own pipeline's rate postroom keeps; 'of chain': postroom / chain; "
        "'of floor': postroom / floor. (f) enqueues by EnqueueBatch.",
        "no-db: postroom's supervisor, persistence and account actors with the Storage swapped for "
        "dicts (bench/nodb.py); its AsyncPostroom is AsyncPostroom(ref) over that supervisor, started "
        "with loop= as AsyncPostroom.start starts postroom's.",
        "chain: a plain chain of pykka ThreadingActors (a thread each; bench/chain.py), no database and "
        "no postroom code: one writer and an actor per account making postroom's hand-offs per message "
        f"(Insert told per message or a batch of {p.batch:,} asked; Arrived once per account per drain "
        "of the writer's inbox; RecordAndClaim; the send on a ThreadPoolExecutor, or an async def "
        "sender on an asyncio loop; the writer's answer then SendEnded from the send thread); no SQL, "
        "no group commit, no retries, pacing or validation.",
        "floor: that chain whose writer also writes postroom's rows per message through sqlite3 "
        "(postroom's schema and pragmas; bench/floor.py): the insert, the claim's read of the row and "
        "of the account's pause and its update, the outcome's read of the attempt in flight and its "
        "update, in one transaction per drain of the writer's inbox, answers, routings and sends only "
        "after the commit; nothing else of postroom's.",
        "seed: one pykka actor per account, INSERT / UPDATE processing / UPDATE completed each in its own "
        "transaction (writers take turns on a lock); boot reads every open row, then hands them out.",
        "huey: SqliteHuey fsync=True, results off, 4 worker threads polling every 5 ms; at-most-once "
        "(the task row is deleted when taken); no accounts, so no per-account figures.",
        f"(c) {p.producers} producer threads, each enqueue blocking until durable; latency from the "
        "instant each message was due to be enqueued to the sender's call.",
        "(d)(e) each run in a fresh process on a pre-written file; (e) RSS read "
        f"{p.settle:g} s after every account has sent once. (e)'s rounds: one process, one Broadcast "
        f"to {p.round_accounts:,} accounts a round, RSS read once every account has sent and idled "
        f"out (idle_timeout={ROUND_IDLE:g} s, the one setting changed there).",
        "(j) runs (a) with POSTROOM_ENCRYPTION_KEYS set (a fresh Fernet key per run) beside (a) "
        "without, alternated; the cost per message is 1/encrypted rate - 1/plain rate.",
        "(k) runs (a) with metrics=Metrics(registry) (a fresh CollectorRegistry per run, scraped every "
        "5 s in a thread) beside (a) without, alternated; the cost per message is 1/metrics rate - "
        "1/plain rate.",
        "(f) statements counted with sqlite3's trace callback, transactions = COMMITs; fsyncs = "
        + ("fsync+fdatasync calls counted in the process by a preloaded shim (bench/fsync_counter.c, "
           "built with the system C compiler; unlike strace it does not stop the process at each call)."
           if fsync_counter() is not None else "not measured (no C compiler): = transactions."),
    ]


if __name__ == "__main__":
    sys.exit(main())
