"""`postroom resume ACCOUNT`: lift an account's pause (a rate limit, a suspension until lifted).

It deletes the account's `account_state` row through a connection of its own: no
supervisor is started and no owner lock is taken, so it works with no supervisor
running and beside a running one (which notices the lifted pause by itself). A SQLite
file that does not exist is reported, never created. A parked account (one that kept
crashing) is not paused: `ResumeAccount` to its supervisor restarts it.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime

from rich.console import Console
from rich.markup import escape

from actors import Limits
from actors.privacy import mask_phone
from postroom_common import AccountPause, ValidationError, pause_end_text
from storage import Storage, open_database

__all__ = ["add_arguments", "lift_pause", "run"]

#: Exit code when the account had no pause in force: nothing was lifted.
EXIT_NO_PAUSE = 1
_CONTROL = re.compile("[\x00-\x1f\x7f]")  # what the door refuses in a phone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `postroom resume` to its subparser."""
    parser.add_argument("account", metavar="ACCOUNT",
                        help="the account's phone, exactly as its messages were enqueued")
    parser.add_argument("--database", required=True, metavar="URL",
                        help="database URL, e.g. sqlite:///postroom.db")


def run(args: argparse.Namespace, console: Console) -> int:
    """Lift the account's pause; 0 when one was lifted, 1 when it had none."""
    phone = _checked_phone(args.account)
    lifted = lift_pause(args.database, phone, datetime.now(UTC))
    account = escape(mask_phone(phone))
    if lifted is None:
        console.print(f"{account} has no pause in force: nothing to lift.")
        return EXIT_NO_PAUSE
    console.print(f"Lifted the pause of {account} (was until {pause_end_text(lifted.until)}, "
                  f"{escape(lifted.reason)}).")
    return 0


def lift_pause(url: str, phone: str, now: datetime) -> AccountPause | None:
    """Delete the account's pause row; the pause that was in force at `now`, if any.

    A row whose pause had already ended goes too: it holds nothing back, and nothing
    is left to lift.
    """
    store = Storage(open_database(url, create=False))
    try:
        with store.write_transaction():
            pause = store.pause(phone, now)
            store.clear_pause(phone)
    finally:
        store.close()
    return pause


def _checked_phone(account: str) -> str:
    # The door's rules for a phone: what it refuses was never enqueued, so never paused.
    limit = Limits().max_phone_length
    if not account.strip():
        raise ValidationError("ACCOUNT must be a phone, not an empty string")
    if _CONTROL.search(account):
        raise ValidationError("ACCOUNT must not contain control characters")
    if len(account) > limit:
        raise ValidationError(f"ACCOUNT is longer than {limit} characters")
    return account
