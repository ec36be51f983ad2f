"""`postroom requeue`: failed messages back to pending with fresh attempts, due now.

One message by id, or every failed message of an account (`--account`), or whose last
error contains a text (`--error-match`, both may combine), a chunk per write transaction
(`_bulk`). Each transaction announces its requeued ids in the change feed, so a running
supervisor sends them without a restart; with none running, the next one does. No owner
lock is taken and no database created. `--dry-run` counts and writes nothing.
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
from postroom_cli._bulk import Select, change_all, count_all
from postroom_common import Change, ChangeKind, InvalidTransition, Message, Status, ValidationError
from storage import Storage

__all__ = ["add_arguments", "run"]

#: Exit code when the message named was not failed: nothing was requeued.
EXIT_NOT_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `postroom requeue` to its subparser."""
    parser.add_argument("message_id", metavar="ID", nargs="?", type=int,
                        help="the failed message to requeue")
    parser.add_argument("--account", metavar="ACCOUNT",
                        help="every failed message of this account (phone, or its mask)")
    parser.add_argument("--error-match", metavar="TEXT",
                        help="every failed message whose last error contains TEXT (case and all)")
    parser.add_argument("--dry-run", action="store_true", help="say how many, write nothing")
    add_database_argument(parser)
    add_output_options(parser)


def run(args: argparse.Namespace, console: Console) -> int:
    """Requeue; 0 when done (or, for one id, 1 when it was not failed)."""
    _check_selection(args)
    with writable_storage(args) as storage:
        if args.message_id is not None:
            return _one(storage, args, console)
        return _many(storage, args, console)


def _check_selection(args: argparse.Namespace) -> None:
    bulk = args.account is not None or args.error_match is not None
    if (args.message_id is None) == (not bulk):
        raise ValidationError("give a message ID, or --account and/or --error-match, not both")
    if args.error_match is not None and not args.error_match:
        raise ValidationError("--error-match needs a text: an empty one matches every error")


def _one(storage: Storage, args: argparse.Namespace, console: Console) -> int:
    message = storage.get(args.message_id)
    will = message.status is Status.FAILED
    if will and not args.dry_run:
        try:
            message = _requeue(storage, args.message_id)
        except InvalidTransition:  # requeued by someone else since the read
            message, will = storage.get(args.message_id), False
    data = {"requeued": int(will), "id": message.id, "account": show_phone(args.unmasked)(message.phone),
            "status": message.status.value, "dry_run": args.dry_run}
    if not will:
        report(args, console, f"Message {message.id} is {message.status.value}: only failed "
                              "messages can be requeued; nothing written.", data)
        return EXIT_NOT_FAILED
    verb = "Would requeue" if args.dry_run else "Requeued"
    report(args, console, f"{verb} message {message.id}{_dry(args)}.", data)
    return 0


def _requeue(storage: Storage, message_id: int) -> Message:
    now = utcnow()
    with storage.write_transaction():
        message = storage.requeue(message_id, now)
        storage.announce(_announced([message]), now)
    return message


def _many(storage: Storage, args: argparse.Namespace, console: Console) -> int:
    phone = None if args.account is None else resolve_account(storage, args.account)
    select = _selection(storage, phone, args.error_match)
    if args.dry_run:
        count = count_all(select)
    else:
        count = change_all(storage, select, storage.requeue, _announced).changed
    whose = "" if phone is None else f" of {escape(show_phone(args.unmasked)(phone))}"
    matching = ("" if args.error_match is None
                else f" whose last error contains {escape(repr(args.error_match))}")
    verb = "Would requeue" if args.dry_run else "Requeued"
    report(args, console, f"{verb} {count} failed message(s){whose}{matching}{_dry(args)}.",
           {"requeued": count, "account": None if phone is None else show_phone(args.unmasked)(phone),
            "error_match": args.error_match, "dry_run": args.dry_run})
    return 0


def _selection(storage: Storage, phone: str | None, error_match: str | None) -> Select:
    def select(after_id: int, limit: int) -> list[int]:
        return storage.ids_in_status([Status.FAILED], phone=phone, error_contains=error_match,
                                     after_id=after_id, limit=limit)

    return select


def _announced(requeued: Sequence[Message]) -> list[Change]:
    # One range per chunk: the owner reads the open rows in it (others' ids between are harmless).
    if not requeued:
        return []
    ids = [m.id for m in requeued]
    return [Change(ChangeKind.REQUEUED, first_id=min(ids), last_id=max(ids))]


def _dry(args: argparse.Namespace) -> str:
    return " (dry run: nothing written)" if args.dry_run else ""
