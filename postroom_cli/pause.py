"""`postroom pause ACCOUNT [--for DURATION]`: stop an account sending, for a while or until lifted.

It writes the account's pause (`account_state`, the row a rate limit writes), replacing any
pause in force, and announces it in the change feed in the same transaction: a running
supervisor's account reads it again and starts no new send (the one in flight at that
instant ends as it ends). `postroom resume` lifts it. No owner lock is taken and no
database created.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta

from rich.console import Console
from rich.markup import escape

from postroom_cli._args import (
    add_database_argument,
    add_output_options,
    parse_duration,
    report,
    resolve_account,
    show_phone,
    utcnow,
    writable_storage,
)
from postroom_common import AccountPause, Change, ChangeKind, ValidationError, pause_end_text
from postroom_common.checks import later
from storage import Storage

__all__ = ["REASON", "add_arguments", "pause_account", "run"]

#: The reason an operator's pause shows (`postroom status`).
REASON = "postroom pause"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `postroom pause` to its subparser."""
    parser.add_argument("account", metavar="ACCOUNT", help="the account's phone, or its mask")
    parser.add_argument("--for", dest="duration", metavar="DURATION", type=str, default=None,
                        help="how long, e.g. 30m, 2h, 1d (default: until `postroom resume`)")
    add_database_argument(parser)
    add_output_options(parser)


def run(args: argparse.Namespace, console: Console) -> int:
    """Pause the account; 0 once the pause is committed."""
    duration = None if args.duration is None else _positive(parse_duration(args.duration))
    with writable_storage(args) as storage:
        phone = resolve_account(storage, args.account)
        pause, replaced = pause_account(storage, phone, duration, utcnow())
    account = show_phone(args.unmasked)(phone)
    until = pause_end_text(pause.until)
    text = f"Paused {escape(account)} " + ("until lifted (postroom resume)" if pause.until is None
                                           else f"until {until}")
    if replaced is not None:
        text += f"; it replaces a pause until {pause_end_text(replaced.until)} ({escape(replaced.reason)})"
    report(args, console, text + ".", {
        "account": account, "until": until,
        "replaced": None if replaced is None else {"until": pause_end_text(replaced.until),
                                                   "reason": replaced.reason}})
    return 0


def pause_account(storage: Storage, phone: str, duration: timedelta | None,
                  now: datetime) -> tuple[AccountPause, AccountPause | None]:
    """Write the account's pause (`duration` from `now`, None: until lifted) and announce it,
    in one transaction; the pause written and the one it replaced, if any was in force."""
    pause = AccountPause(phone, None if duration is None else later(now, duration.total_seconds()), REASON)
    with storage.write_transaction():
        replaced = storage.pause(phone, now)
        storage.set_pause(pause, now)
        storage.announce([Change(ChangeKind.PAUSED, phone)], now)
    return pause, replaced


def _positive(duration: timedelta) -> timedelta:
    if duration <= timedelta(0):
        raise ValidationError("--for must be longer than 0s (without it: until lifted)")
    return duration
