"""`postroom list`: the messages a filter selects, a page at a time.

Filters: account (whole or masked as `status` prints it), status, priority, when it was
created (`--since`, `--until`: ISO 8601 or a duration ago), a text its last error
contains. Oldest first, or newest first; a page ends with the cursor of the next one
(`--after-id`). Texts are not listed (`postroom inspect ID` shows one). Read-only, beside
a running supervisor or none: nothing is written, created or locked.
"""

from __future__ import annotations

import argparse
from datetime import datetime

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from postroom_cli._args import (
    ShowPhone,
    add_database_argument,
    database_url,
    duration_text,
    parse_instant,
    print_json,
    resolve_account,
    safe_text,
    show_phone,
    utcnow,
)
from postroom_cli.inspection import message_id_arg, message_json
from postroom_common import OPEN_STATUSES, Message, MessageFilter, Priority, Status, ValidationError
from postroom_common.checks import check_count
from storage import Storage, open_database

__all__ = ["MAX_LIMIT", "add_arguments", "run"]

#: The most messages one page may hold.
MAX_LIMIT = 10_000
_ERROR_SHOWN = 60  # characters of the last error a table row shows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `postroom list` to its subparser."""
    add_database_argument(parser)
    parser.add_argument("--account", metavar="ACCOUNT",
                        help="of this account: the phone, or its mask as status prints it")
    parser.add_argument("--status", action="append", choices=[s.value for s in Status],
                        help="of this status (repeat it for several)")
    parser.add_argument("--priority", action="append", choices=[p.name.lower() for p in Priority],
                        help="of this priority (repeat it for several)")
    parser.add_argument("--since", metavar="WHEN", help="created at or after WHEN: ISO 8601 "
                        "(UTC unless it says otherwise) or a duration ago (30s, 5m, 2h, 1d)")
    parser.add_argument("--until", metavar="WHEN", help="created before WHEN (same forms)")
    parser.add_argument("--error", metavar="TEXT", help="whose last error contains TEXT (any case)")
    parser.add_argument("--limit", type=int, default=50, help=f"at most N (default 50, at most {MAX_LIMIT})")
    parser.add_argument("--after-id", type=message_id_arg, metavar="ID",
                        help="the page after this id: the cursor the last page printed")
    parser.add_argument("--newest-first", action="store_true", help="newest first (default: oldest first)")
    parser.add_argument("--json", action="store_true", help="print the page as one JSON document")
    parser.add_argument("--unmasked", action="store_true",
                        help="show whole phone numbers (default: masked, e.g. +15*******01~c5af)")


def run(args: argparse.Namespace, console: Console) -> int:
    """Print one page of messages and the cursor of the next."""
    check_count("--limit", args.limit, minimum=1, maximum=MAX_LIMIT)
    created = _created_range(args)
    store = Storage(open_database(database_url(args), read_only=True))
    try:
        store.check_schema()
        store.check_keys()
        found = store.find_messages(_query(store, args, created))
    finally:
        store.close()
    page, more = found[:args.limit], len(found) > args.limit
    cursor = page[-1].id if more else None
    show = show_phone(args.unmasked)
    if args.json:
        print_json({"messages": [message_json(m, show, text=False) for m in page], "next_after_id": cursor})
    else:
        console.print(_table(page, show, utcnow()))
        console.print(f"{len(page)} messages." + (f" Next page: --after-id {cursor}" if more else ""))
    return 0


def _created_range(args: argparse.Namespace) -> tuple[datetime | None, datetime | None]:
    """--since and --until as instants; `ValidationError` unless since comes before until."""
    now = utcnow()
    since = None if args.since is None else parse_instant(args.since, now)
    until = None if args.until is None else parse_instant(args.until, now)
    if since is not None and until is not None and since >= until:
        raise ValidationError("--since must be before --until")
    return since, until


def _query(store: Storage, args: argparse.Namespace,
           created: tuple[datetime | None, datetime | None]) -> MessageFilter:
    """The filter of the command line; one more message than a page, to know whether more follow."""
    return MessageFilter(
        phone=None if args.account is None else resolve_account(store, args.account),
        statuses=tuple(Status(s) for s in dict.fromkeys(args.status or ())),
        priorities=tuple(Priority[p.upper()] for p in dict.fromkeys(args.priority or ())),
        created_from=created[0], created_before=created[1], error_contains=args.error,
        after_id=args.after_id, newest_first=args.newest_first, limit=args.limit + 1)


def _table(page: list[Message], show: ShowPhone, now: datetime) -> Table:
    # Ages rather than instants, and little padding: the rows must fit 80 columns (off a TTY).
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    for column in ("id", "account", "status", "prio", "tries", "age", "due", "user", "error"):
        table.add_column(column, justify="right" if column in ("id", "tries", "age") else "left",
                         no_wrap=column not in ("user", "error"), overflow="fold",
                         min_width=10 if column == "error" else None)
    for message in page:
        table.add_row(*_row(message, show, now))
    return table


def _row(m: Message, show: ShowPhone, now: datetime) -> list[str]:
    error = m.last_error or ""
    shown = error if len(error) <= _ERROR_SHOWN else error[:_ERROR_SHOWN - 3] + "..."
    return [str(m.id), escape(show(m.phone)), m.status.value, m.priority.name.lower(),
            f"{m.attempts}/{m.max_attempts}", duration_text(now - m.created_at), _due(m, now),
            escape(safe_text(m.user_id)), escape(safe_text(shown))]


def _due(m: Message, now: datetime) -> str:
    """When an open message falls due: `now`, or `in 5m 00s`; `-` for the others."""
    if m.status not in OPEN_STATUSES:
        return "-"
    return "now" if m.available_at <= now else f"in {duration_text(m.available_at - now)}"
