"""`postroom inspect ID`: one message, every field of it, and its attempts below.

Read from the database through a read-only connection, beside a running supervisor or
none: nothing is written, created or locked. The text is shown (it is the operator's own
database); `--no-text` hides it. The account is masked unless `--unmasked`. Values from
the database are printed with their control characters escaped: a text or an error can
hold an escape sequence meant for the operator's terminal.
"""

from __future__ import annotations

import argparse
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
    safe_text,
    show_phone,
    utcnow,
)
from postroom_cli.status import pause_json
from postroom_common import AccountPause, Attempt, Message
from storage import Storage, open_database

__all__ = ["add_arguments", "attempt_json", "message_id_arg", "message_json", "run"]

_MAX_ID = 2**63 - 1  # a BIGINT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `postroom inspect` to its subparser."""
    parser.add_argument("id", type=message_id_arg, metavar="ID", help="the message's id")
    add_database_argument(parser)
    parser.add_argument("--no-text", action="store_true", help="leave the message's text out")
    parser.add_argument("--json", action="store_true", help="print it as one JSON document")
    parser.add_argument("--unmasked", action="store_true",
                        help="show the whole phone number (default: masked, e.g. +15*******01~c5af)")


def message_id_arg(text: str) -> int:
    """For argparse's `type=`: a message id, a whole number from 1 to a BIGINT's largest."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= _MAX_ID:
        raise argparse.ArgumentTypeError(f"{text!r} is not a message id (a whole number from 1)")
    return value


def run(args: argparse.Namespace, console: Console) -> int:
    """Show the message; `MessageNotFound` (exit 2) when no message has this id."""
    store = Storage(open_database(database_url(args), read_only=True))
    try:
        store.check_schema()
        store.check_keys()
        message = store.get(args.id)
        pause = store.pause(message.phone, utcnow())
    finally:
        store.close()
    show = show_phone(args.unmasked)
    if args.json:
        print_json({**message_json(message, show, text=not args.no_text),
                    "history": [attempt_json(a) for a in message.history],
                    "account_pause": None if pause is None else pause_json(pause, show)})
    else:
        console.print(Group(_fields_table(message, show, not args.no_text, pause),
                            _history_table(message.history)))
    return 0


def message_json(message: Message, show: ShowPhone, *, text: bool) -> dict[str, Any]:
    """Every field of a message as JSON values; its text only if `text`."""
    fields: dict[str, Any] = {
        "id": message.id, "account": show(message.phone), "user_id": message.user_id,
        "status": message.status, "priority": message.priority.name.lower(),
        "attempts": message.attempts, "max_attempts": message.max_attempts,
        "created_at": message.created_at, "scheduled_at": message.scheduled_at,
        "available_at": message.available_at, "updated_at": message.updated_at,
        "completed_at": message.completed_at, "last_error": message.last_error,
        "idempotency_key": message.idempotency_key, "attachment": message.attachment,
    }
    return {**fields, "text": message.text} if text else fields


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    """One attempt of the history as JSON values."""
    return {"number": attempt.number, "attempt": attempt.attempt, "started_at": attempt.started_at,
            "ended_at": attempt.ended_at, "outcome": attempt.outcome, "error": attempt.error}


def _fields_table(message: Message, show: ShowPhone, text: bool, pause: AccountPause | None) -> Table:
    table = Table(title=f"Message {message.id}", title_justify="left", box=box.SIMPLE, show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in message_json(message, show, text=text).items():
        table.add_row(name, _cell(value))
    if pause is not None:
        table.add_row("account_pause", escape(pause_json(pause, show)["state"]))
    return table


def _history_table(history: tuple[Attempt, ...]) -> RenderableType:
    if not history:
        return "Attempts: none yet."
    table = Table(title=f"Attempts ({len(history)} kept)", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("#", "attempt", "started (UTC)", "took", "outcome", "error"):
        table.add_column(column, overflow="fold")
    for a in history:
        table.add_row(str(a.number), str(a.attempt), a.started_at.isoformat(),
                      duration_text(a.ended_at - a.started_at), a.outcome.value, _cell(a.error))
    return table


def _cell(value: object) -> str:
    """A value as a table shows it: instants in ISO 8601, nothing as `-`, text made safe."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat()
    return escape(safe_text(str(value)))
