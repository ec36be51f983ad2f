"""`postroom resume ACCOUNT`: lift an account's pause (a rate limit, a suspension until lifted).

It deletes the account's `account_state` row and announces it in the change feed, in one
transaction, through a connection of its own: no supervisor is started and no owner lock is
taken, so it works with no supervisor running and beside a running one, whose account reads
its pause again at once. The announcement also restarts an account its running supervisor
parked (it kept crashing), as `ResumeAccount` does. A SQLite file that does not exist is
reported, never created.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime

from rich.console import Console
from rich.markup import escape

from actors import Limits
from postroom_cli._args import (
    add_database_argument,
    add_output_options,
    report,
    resolve_account,
    show_phone,
    utcnow,
    writable_storage,
)
from postroom_common import AccountPause, Change, ChangeKind, ValidationError, pause_end_text
from storage import Storage

__all__ = ["add_arguments", "lift_pause", "run"]

#: Exit code when the account had no pause in force: nothing was lifted.
EXIT_NO_PAUSE = 1
_CONTROL = re.compile("[\x00-\x1f\x7f]")  # what the door refuses in a phone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `postroom resume` to its subparser."""
    parser.add_argument("account", metavar="ACCOUNT",
                        help="the account's phone, as its messages were enqueued, or its mask")
    add_database_argument(parser)
    add_output_options(parser)


def run(args: argparse.Namespace, console: Console) -> int:
    """Lift the account's pause; 0 when one was lifted, 1 when it had none."""
    phone = _checked_phone(args.account)
    with writable_storage(args) as storage:
        phone = resolve_account(storage, phone)
        lifted = lift_pause(storage, phone, utcnow())
    account = escape(show_phone(args.unmasked)(phone))
    data = {"account": show_phone(args.unmasked)(phone), "lifted": lifted is not None,
            "was_until": None if lifted is None else pause_end_text(lifted.until),
            "reason": None if lifted is None else lifted.reason}
    if lifted is None:
        report(args, console, f"{account} has no pause in force: nothing to lift (a running "
                              "supervisor restarts it if it had parked it).", data)
        return EXIT_NO_PAUSE
    report(args, console, f"Lifted the pause of {account} (was until {pause_end_text(lifted.until)}, "
                          f"{escape(lifted.reason)}).", data)
    return 0


def lift_pause(storage: Storage, phone: str, now: datetime) -> AccountPause | None:
    """Delete the account's pause row and announce it, in one transaction; the pause that was
    in force at `now`, if any.

    A row whose pause had already ended goes too: it holds nothing back, and nothing
    is left to lift. The announcement goes even with no pause: it is what restarts an
    account a running supervisor parked.
    """
    with storage.write_transaction():
        pause = storage.pause(phone, now)
        storage.clear_pause(phone)
        storage.announce([Change(ChangeKind.PAUSED, phone)], now)
    return pause


def _checked_phone(account: str) -> str:
    # The door's rules for a phone: what it refuses was never enqueued, so never paused.
    limit = Limits().max_phone_length + len("~c5af")  # the mask of the longest phone
    if not account.strip():
        raise ValidationError("ACCOUNT must be a phone, not an empty string")
    if _CONTROL.search(account):
        raise ValidationError("ACCOUNT must not contain control characters")
    if len(account) > limit:
        raise ValidationError(f"ACCOUNT is longer than {limit} characters")
    return account
