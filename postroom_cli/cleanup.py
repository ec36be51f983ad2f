"""`postroom cleanup [--older-than DURATION]`: delete finished messages older than that.

Completed, failed and cancelled rows that finished longer ago than `--older-than` (default:
a supervisor's retention) go with their attempt history, in chunks of the supervisor's own
cleanup, each its own write transaction, so sending beside it is never held up for long.
Open and in-flight rows are never touched: the owner needs no announcement. No owner lock
is taken and no database created. `--dry-run` counts and writes nothing.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta

from rich.console import Console

from actors.persistence import CLEANUP_CHUNK
from postroom_cli._args import (
    add_database_argument,
    add_output_options,
    parse_duration,
    report,
    utcnow,
    writable_storage,
)
from postroom_common.checks import earlier
from storage import Storage
from supervisor import SupervisorSettings

__all__ = ["add_arguments", "delete_finished", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `postroom cleanup` to its subparser."""
    retention = SupervisorSettings().retention
    parser.add_argument("--older-than", metavar="DURATION", default=None,
                        help=f"finished longer ago than this, e.g. 12h, 30d "
                             f"(default: {retention.days}d, a supervisor's retention)")
    parser.add_argument("--dry-run", action="store_true", help="say how many, write nothing")
    add_database_argument(parser)
    add_output_options(parser)


def run(args: argparse.Namespace, console: Console) -> int:
    """Delete (or count); 0 when done."""
    older_than = (SupervisorSettings().retention if args.older_than is None
                  else parse_duration(args.older_than))
    cutoff = earlier(utcnow(), older_than)
    with writable_storage(args) as storage:
        count = storage.count_finished_before(cutoff) if args.dry_run else delete_finished(storage, cutoff)
    verb = "Would delete" if args.dry_run else "Deleted"
    dry = " (dry run: nothing written)" if args.dry_run else ""
    report(args, console, f"{verb} {count} message(s) finished before {cutoff.isoformat()}{dry}.",
           {"deleted": count, "before": cutoff.isoformat(),
            "older_than_seconds": int(older_than / timedelta(seconds=1)), "dry_run": args.dry_run})
    return 0


def delete_finished(storage: Storage, cutoff: datetime) -> int:
    """Delete every row finished before `cutoff`, a chunk per write transaction; how many."""
    total = 0
    while True:
        with storage.write_transaction():
            deleted = storage.delete_finished_before(cutoff, CLEANUP_CHUNK)
        total += deleted
        if deleted < CLEANUP_CHUNK:
            return total
