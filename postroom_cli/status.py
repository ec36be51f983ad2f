"""`postroom status`: counts by status and by account, read straight from the database.

No supervisor is started: a running one holds the database's owner lock, and status
must work beside it. The database is opened read-only: nothing is created or changed (not
a SQLite file's journal mode, nor the WAL a crashed writer left), and a file its user can
only read is enough. A SQLite file that does not exist is reported, never created.
Phones are masked (`+15*******01~c5af`) unless `--unmasked` asks for them in full.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from actors.privacy import mask_phone
from postroom_common import AccountPause, QueueStats, Status, StorageError, pause_end_text
from storage import Storage, open_database

__all__ = ["add_arguments", "read_pauses", "read_stats", "run", "stats_to_json"]

#: How an account is shown: masked, or in full with --unmasked.
ShowPhone = Callable[[str], str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `postroom status` to its subparser."""
    parser.add_argument("--database", required=True, metavar="URL",
                        help="database URL, e.g. sqlite:///postroom.db")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.add_argument("--unmasked", action="store_true",
                        help="show whole phone numbers (default: masked, e.g. +15*******01~c5af)")


def run(args: argparse.Namespace, console: Console) -> int:
    """Print the queue's counts; `DatabaseNotFound` when the SQLite file does not exist."""
    stats = read_stats(args.database)
    pauses = read_pauses(args.database)
    show = _show_phone(args.unmasked)
    if args.json:
        report = {**stats_to_json(stats, unmasked=args.unmasked), "paused": _pauses_json(pauses, show)}
        print(json.dumps(report, indent=2))
    else:
        console.print(_status_table(stats))
        console.print(_account_table(stats, show))
        if pauses:
            console.print(_pause_table(pauses, show))
    return 0


def _show_phone(unmasked: bool) -> ShowPhone:
    return str if unmasked else mask_phone


def read_pauses(url: str) -> list[AccountPause]:
    """Account-wide pauses in force now (rate limits, suspensions)."""
    store = Storage(open_database(url, read_only=True))
    try:
        return store.pauses(datetime.now(UTC))
    except StorageError:
        return []  # a database from before pauses were persisted has no account_state table
    finally:
        store.close()


def _pauses_json(pauses: list[AccountPause], show: ShowPhone) -> list[dict[str, str]]:
    return [{"account": show(p.phone), "until": pause_end_text(p.until), "reason": p.reason}
            for p in sorted(pauses, key=lambda p: p.phone)]


def _pause_table(pauses: list[AccountPause], show: ShowPhone) -> Table:
    table = Table(title="Paused accounts", box=box.SIMPLE)
    for column in ("account", "until (UTC)", "reason"):
        table.add_column(column)
    for row in _pauses_json(pauses, show):
        table.add_row(row["account"], row["until"], row["reason"])
    return table


def read_stats(url: str) -> QueueStats:
    """The counts, through a read-only connection of our own (no supervisor, no lock)."""
    store = Storage(open_database(url, read_only=True))
    try:
        return store.stats()
    finally:
        store.close()


def stats_to_json(stats: QueueStats, *, unmasked: bool = False) -> dict[str, Any]:
    """The counts as plain JSON values; accounts sorted, phones masked unless `unmasked`."""
    show = _show_phone(unmasked)
    return {
        "total": stats.total,
        "by_status": {status.value: stats.by_status[status] for status in Status},
        "accounts": [_account_json(show(phone), counts) for phone, counts in _accounts(stats)],
    }


def _accounts(stats: QueueStats) -> list[tuple[str, dict[Status, int]]]:
    # A list, not a dict keyed by masked phone: two phones may still mask alike (a hash collision).
    return sorted(stats.by_account.items())


def _account_json(account: str, counts: dict[Status, int]) -> dict[str, Any]:
    return {
        "account": account,
        "total": sum(counts.values()),
        "by_status": {status.value: counts.get(status, 0) for status in Status},
    }


def _status_table(stats: QueueStats) -> Table:
    table = Table(title=f"Messages by status ({stats.total} in all)", title_justify="left",
                  box=box.SIMPLE_HEAD)
    table.add_column("status")
    table.add_column("messages", justify="right")
    table.add_column("share", justify="right")
    for status in Status:
        count = stats.by_status[status]
        share = f"{100 * count / stats.total:.1f} %" if stats.total else "-"
        table.add_row(status.value, str(count), share)
    return table


def _account_table(stats: QueueStats, show: ShowPhone) -> Table:
    # No padding: one column per status must fit in 80 columns (rich's width off a TTY).
    table = Table(title=f"Messages by account ({len(stats.by_account)} accounts)",
                  title_justify="left", box=box.SIMPLE_HEAD, padding=0)
    table.add_column("account", no_wrap=True)
    for status in Status:
        table.add_column(status.value, justify="right")
    table.add_column("total", justify="right")
    for phone, counts in _accounts(stats):
        cells = [str(counts.get(status, 0)) for status in Status]
        table.add_row(show(phone), *cells, str(sum(counts.values())))
    return table
