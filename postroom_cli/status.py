"""`postroom status`: the queue at a glance, read straight from the database.

Counts by status and by account; open messages due now apart from those due later (a
schedule, a backoff); how long the longest-waiting due message has waited (accounts a
pause holds aside: they are shown as paused, or disabled until lifted); and whether a
supervisor owns the database now, and which one.

No supervisor is started: a running one holds the database's owner lock, and status
must work beside it. The database is opened read-only: nothing is created or changed (not
a SQLite file's journal mode, nor the WAL a crashed writer left), no lock is taken, and a
file its user can only read is enough. A SQLite file that does not exist is reported, never
created; a database without postroom's schema is said to be so (`postroom migrate`).
Phones are masked (`+15*******01~c5af`) unless `--unmasked` asks for them in full.
`--watch` shows it again every few seconds until Ctrl-C.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table

from postroom_cli._args import (
    ShowPhone,
    add_database_argument,
    database_url,
    duration_text,
    print_json,
    seconds_arg,
    show_phone,
    utcnow,
)
from postroom_cli._output import fail
from postroom_common import AccountPause, OpenWork, OwnerState, QueueStats, Status, StorageError
from storage import Storage, open_database

__all__ = ["StatusReport", "add_arguments", "oldest_due", "owner_json", "owner_text", "pause_json",
           "read_pauses", "read_report", "read_stats", "run"]

#: Seconds between two refreshes of `--watch` given without a value.
WATCH_EVERY = 2.0


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What `postroom status` shows, read at one instant."""

    at: datetime
    """When it was read (UTC)."""
    stats: QueueStats
    """Counts by status and by account."""
    work: list[OpenWork]
    """Open messages per account: due now, due later."""
    pauses: list[AccountPause]
    """Pauses in force (a rate limit until an instant, a suspension until lifted)."""
    owner: OwnerState
    """Whether a supervisor owns the database now, and which."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `postroom status` to its subparser."""
    add_database_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    parser.add_argument("--unmasked", action="store_true",
                        help="show whole phone numbers (default: masked, e.g. +15*******01~c5af)")
    parser.add_argument("--watch", nargs="?", const=WATCH_EVERY, default=None, type=seconds_arg,
                        metavar="SECONDS", help="show it again every SECONDS (default 2) until Ctrl-C; "
                                                "with --json, one JSON document a line")
    # Tests bound --watch with it: that many reports, then exit 0.
    parser.add_argument("--watch-count", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace, console: Console) -> int:
    """Print the report (again and again with --watch); `DatabaseNotFound` when the SQLite
    file does not exist, `SchemaMismatch` when it holds no postroom schema."""
    # Counts and instants only, never a text: no encryption key needed.
    store = Storage(open_database(database_url(args), read_only=True), keys=None)
    try:
        if args.watch is None:
            _show(read_report(store, utcnow()), args, console)
            return 0
        return _watch(store, args, console)
    finally:
        store.close()


def read_report(store: Storage, now: datetime) -> StatusReport:
    """Everything `status` shows; `SchemaMismatch` first if the schema is not this postroom's."""
    store.check_schema()
    return StatusReport(at=now, stats=store.stats(), work=store.open_by_account(now),
                        pauses=store.pauses(now), owner=store.owner_state())


def _watch(store: Storage, args: argparse.Namespace, console: Console) -> int:
    """Show the report every `args.watch` seconds until Ctrl-C (or `--watch-count` reports).
    A database error is shown in place of one report, and the next one is tried."""
    try:
        for shown in _counted(args.watch_count):
            if shown:
                time.sleep(args.watch)
            try:
                report = read_report(store, utcnow())
            except StorageError as error:
                fail(f"{type(error).__name__}: {error}")
                continue
            if console.is_terminal and not args.json:
                console.clear()
            _show(report, args, console)
    except KeyboardInterrupt:
        pass  # how a watch ends
    return 0


def _counted(limit: int | None) -> Iterator[int]:
    """0, 1, 2, ... up to `limit` (excluded), or without end."""
    shown = 0
    while limit is None or shown < limit:
        yield shown
        shown += 1


def _show(report: StatusReport, args: argparse.Namespace, console: Console) -> None:
    show = show_phone(args.unmasked)
    if args.json:
        print_json(_report_json(report, show), indent=None if args.watch is not None else 2)
        return
    console.print(_report_view(report, show))


# -- JSON -----------------------------------------------------------------------------------


def _report_json(report: StatusReport, show: ShowPhone) -> dict[str, Any]:
    work = {w.phone: w for w in report.work}
    oldest = oldest_due(report.work, report.pauses)
    return {
        "at": report.at,
        "total": report.stats.total,
        "by_status": _by_status(report.stats.by_status),
        "due": sum(w.due for w in report.work),
        "scheduled": sum(w.scheduled for w in report.work),
        "oldest_due": None if oldest is None else _oldest_json(oldest, report.at, show),
        "accounts": [_account_json(show(phone), counts, work.get(phone))
                     for phone, counts in _accounts(report.stats)],
        "paused": [pause_json(p, show) for p in sorted(report.pauses, key=lambda p: p.phone)],
        "owner": owner_json(report.owner),
    }


def _by_status(counts: dict[Status, int]) -> dict[str, int]:
    return {status.value: counts.get(status, 0) for status in Status}


def _account_json(account: str, counts: dict[Status, int], work: OpenWork | None) -> dict[str, Any]:
    return {
        "account": account,
        "total": sum(counts.values()),
        "by_status": _by_status(counts),
        "due": 0 if work is None else work.due,
        "scheduled": 0 if work is None else work.scheduled,
        "oldest_due_at": None if work is None else work.oldest_due_at,
    }


def _oldest_json(oldest: OpenWork, now: datetime, show: ShowPhone) -> dict[str, Any]:
    assert oldest.oldest_due_at is not None  # oldest_due picks only accounts with due work
    return {"account": show(oldest.phone), "due_since": oldest.oldest_due_at,
            "age_seconds": (now - oldest.oldest_due_at).total_seconds()}


def pause_json(pause: AccountPause, show: ShowPhone) -> dict[str, Any]:
    """A pause as JSON: `until` null and `disabled` true for a suspension until lifted."""
    return {"account": show(pause.phone), "until": pause.until, "disabled": pause.until is None,
            "state": _pause_state(pause), "reason": pause.reason}


def owner_json(owner: OwnerState) -> dict[str, Any]:
    """The owner as JSON: `running` true, false, or null when it cannot be told."""
    return {"running": owner.lock_held, "lock_holder": owner.lock_holder, "holder": owner.holder,
            "epoch": owner.epoch, "taken_at": owner.taken_at,
            "nodes": [{"node": n.node, "holder": n.holder, "lease_left_seconds": n.lease_left,
                       "buckets": n.buckets} for n in owner.nodes]}


# -- what the report says ------------------------------------------------------------------


def oldest_due(work: list[OpenWork], pauses: list[AccountPause]) -> OpenWork | None:
    """The account whose due message has waited longest, among those no pause holds (a paused
    account's messages wait for its pause, which status shows apart)."""
    held = {pause.phone for pause in pauses}
    waiting = [w for w in work if w.oldest_due_at is not None and w.phone not in held]
    return min(waiting, key=lambda w: (w.oldest_due_at, w.phone), default=None)


def _pause_state(pause: AccountPause) -> str:
    # Never "lifted": a suspension with no end holds until someone lifts it.
    return "disabled until lifted" if pause.until is None else f"paused until {pause.until.isoformat()}"


def owner_text(owner: OwnerState) -> str:
    """Whether a supervisor owns the database now, in a sentence."""
    leased = [n for n in owner.nodes if n.lease_left is not None]
    if leased:
        live = [n for n in leased if n.lease_left is not None and n.lease_left > 0]
        listed = "; ".join(f"node {n.node}, {n.holder}, {n.buckets} buckets, lease "
                           + (f"{n.lease_left:.0f} s left" if n.lease_left is not None and n.lease_left > 0
                              else "expired") for n in leased)
        return f"{len(live)} node{'s' if len(live) != 1 else ''} running: {listed}"
    last = (f"{owner.holder} (epoch {owner.epoch}, since {owner.taken_at.isoformat()})"
            if owner.holder is not None and owner.taken_at is not None else None)
    if owner.lock_held:
        return f"running: {last or 'a supervisor'}; the owner lock is held by {owner.lock_holder}"
    never = "no supervisor has ever run on this database"
    if owner.lock_held is None:
        return f"cannot tell whether a supervisor runs (no /proc/locks); the last owner: {last or never}"
    return f"no supervisor running (the last: {last})" if last else f"no supervisor running ({never})"


# -- tables ---------------------------------------------------------------------------------


def _report_view(report: StatusReport, show: ShowPhone) -> RenderableType:
    parts: list[RenderableType] = [_status_table(report.stats), _summary(report, show),
                                   _account_table(report.stats, show)]
    if report.work or report.pauses:
        parts.append(_work_table(report, show))
    if report.pauses:
        parts.append(_pause_table(report.pauses, show))
    parts.append(f"Owner: {escape(owner_text(report.owner))}")
    return Group(*parts)


def _summary(report: StatusReport, show: ShowPhone) -> str:
    due, later = sum(w.due for w in report.work), sum(w.scheduled for w in report.work)
    oldest = oldest_due(report.work, report.pauses)
    waited = ("none is due" if oldest is None or oldest.oldest_due_at is None
              else f"the oldest has waited {duration_text(report.at - oldest.oldest_due_at)}"
                   f" ({escape(show(oldest.phone))})")
    return f"Open: {due} due now, {later} scheduled later; {waited}.\n"


def _accounts(stats: QueueStats) -> list[tuple[str, dict[Status, int]]]:
    # A list, not a dict keyed by masked phone: two phones may still mask alike (a hash collision).
    return sorted(stats.by_account.items())


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
        table.add_row(escape(show(phone)), *cells, str(sum(counts.values())))
    return table


def _work_table(report: StatusReport, show: ShowPhone) -> Table:
    table = Table(title="Open messages by account", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("account", "due now", "scheduled", "oldest due waited", "pause"):
        table.add_column(column, justify="left" if column in ("account", "pause") else "right")
    work = {w.phone: w for w in report.work}
    pauses = {p.phone: p for p in report.pauses}
    for phone in sorted(work.keys() | pauses.keys()):
        w = work.get(phone) or OpenWork(phone, 0, 0, None)
        table.add_row(escape(show(phone)), str(w.due), str(w.scheduled),
                      "-" if w.oldest_due_at is None else duration_text(report.at - w.oldest_due_at),
                      _pause_word(pauses.get(phone)))
    return table


def _pause_word(pause: AccountPause | None) -> str:
    return "" if pause is None else ("disabled" if pause.until is None else "paused")


def _pause_table(pauses: list[AccountPause], show: ShowPhone) -> Table:
    table = Table(title="Paused accounts", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("account", "state (UTC)", "reason"):
        table.add_column(column)
    for pause in sorted(pauses, key=lambda p: p.phone):
        table.add_row(escape(show(pause.phone)), _pause_state(pause), escape(pause.reason))
    return table


# -- for other modules and tests ----------------------------------------------------------


def read_stats(url: str) -> QueueStats:
    """The counts, through a read-only connection of our own (no supervisor, no lock)."""
    store = Storage(open_database(url, read_only=True), keys=None)
    try:
        return store.stats()
    finally:
        store.close()


def read_pauses(url: str) -> list[AccountPause]:
    """Account-wide pauses in force now (rate limits, suspensions), read-only."""
    store = Storage(open_database(url, read_only=True), keys=None)
    try:
        return store.pauses(utcnow())
    finally:
        store.close()
