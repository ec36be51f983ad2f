"""`postroom cancel`: cancel a message, or every pending or retrying message of an account.

Each write transaction cancels and announces its messages in the change feed (`_bulk`): a
running supervisor drops them from its account's window, and its claim reads the status in
the database, so a message cancelled here is never sent once the command has returned. A
message being sent at that instant (`processing`) cannot be called back: it is reported and
left to end as its send ends. No owner lock is taken and no database created. `--dry-run`
counts and writes nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from postroom_cli._args import (
    add_database_argument,
    add_output_options,
    report,
    resolve_account,
    show_phone,
    utcnow,
    writable_storage,
)
from postroom_cli._bulk import change_all, count_all
from postroom_common import (
    OPEN_STATUSES,
    Change,
    ChangeKind,
    InvalidTransition,
    Message,
    Status,
    ValidationError,
)
from storage import Storage

__all__ = ["add_arguments", "run"]

#: Exit code when the message named was not cancelled (being sent, or finished).
EXIT_NOT_CANCELLED = 1
_IN_FLIGHT = "already being sent: it will not be cancelled"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `postroom cancel` to its subparser."""
    parser.add_argument("message_id", metavar="ID", nargs="?", type=int,
                        help="the pending or retrying message to cancel")
    parser.add_argument("--account", metavar="ACCOUNT",
                        help="every pending or retrying message of this account (phone, or its mask)")
    parser.add_argument("--dry-run", action="store_true", help="say how many, write nothing")
    add_database_argument(parser)
    add_output_options(parser)


def run(args: argparse.Namespace, console: Console) -> int:
    """Cancel; 0 when done (for one id, 1 when it was being sent or had finished)."""
    if (args.message_id is None) == (args.account is None):
        raise ValidationError("give a message ID or --account, one of them")
    with writable_storage(args) as storage:
        if args.message_id is not None:
            return _one(storage, args, console)
        return _many(storage, args, console)


def _one(storage: Storage, args: argparse.Namespace, console: Console) -> int:
    if args.dry_run:
        message, cancelled = storage.get(args.message_id), False
    else:
        message, cancelled = _cancel(storage, args.message_id)
    show = show_phone(args.unmasked)
    data = {"cancelled": int(cancelled), "id": message.id, "account": show(message.phone),
            "status": message.status.value, "dry_run": args.dry_run}
    if args.dry_run and message.status in OPEN_STATUSES:
        report(args, console, f"Would cancel message {message.id} (dry run: nothing written).", data)
        return 0
    if cancelled:
        report(args, console, f"Cancelled message {message.id}: it will not be sent.", data)
        return 0
    why = _IN_FLIGHT if message.status is Status.PROCESSING else f"{message.status.value}: nothing to cancel"
    report(args, console, f"Message {message.id} is {why}.", data)
    return EXIT_NOT_CANCELLED


def _cancel(storage: Storage, message_id: int) -> tuple[Message, bool]:
    """The message as it is once the transaction ends, and whether it was cancelled by it."""
    now = utcnow()
    with storage.write_transaction():
        try:
            message = storage.cancel(message_id, now)
        except InvalidTransition:  # read in the same transaction: what stopped the cancel
            return storage.get(message_id), False
        storage.announce(_announced([message]), now)
    return message, True


def _many(storage: Storage, args: argparse.Namespace, console: Console) -> int:
    phone = resolve_account(storage, args.account)
    account = escape(show_phone(args.unmasked)(phone))
    selection = _AccountOpen(storage, phone)
    if args.dry_run:
        count, verb = count_all(selection), "Would cancel"
    else:
        bulk = change_all(storage, selection, storage.cancel, _announced)
        selection.in_flight.update(bulk.refused)  # claimed between a chunk's read and its lock
        count, verb = bulk.changed, "Cancelled"
    in_flight = len(selection.in_flight)
    text = f"{verb} {count} pending or retrying message(s) of {account}"
    if in_flight:
        text += f"; {in_flight} {_IN_FLIGHT}"
    dry = " (dry run: nothing written)" if args.dry_run else ""
    report(args, console, f"{text}{dry}.",
           {"cancelled": count, "already_being_sent": in_flight, "account": show_phone(args.unmasked)(phone),
            "dry_run": args.dry_run})
    return 0


class _AccountOpen:
    """A `Select` of the account's pending and retrying messages; and, read in the same
    transactions, those being sent (`in_flight`), which cannot be cancelled.

    Rows in flight are never locked here: the owner locks one to record its send's outcome
    before it locks the next to claim, and taking them in another order could deadlock.
    """

    def __init__(self, storage: Storage, phone: str) -> None:
        self.storage, self.phone = storage, phone
        self.in_flight: set[int] = set()

    def __call__(self, after_id: int, limit: int) -> list[int]:
        self.in_flight.update(self.storage.ids_in_status([Status.PROCESSING], phone=self.phone, limit=limit))
        return self.storage.ids_in_status(OPEN_STATUSES, phone=self.phone, after_id=after_id, limit=limit)


def _announced(cancelled: Sequence[Message]) -> list[Change]:
    # One entry per message: the owner takes each out of its account's window by id.
    return [Change(ChangeKind.CANCELLED, m.phone, m.id, m.id) for m in cancelled]
