"""`postroom enqueue`: queue one message from the command line, through a `Producer`.

The same door as the supervisor's (validation, typed errors, idempotency keys), committed
and announced in the change feed before its id is printed: a running supervisor sends it
without a restart; with none running, the next one does. No owner lock is taken, no
database created.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime

from rich.console import Console
from rich.markup import escape

from actors.producer import Producer
from postroom_cli._args import (
    add_database_argument,
    add_output_options,
    database_url,
    parse_duration,
    report,
    resolve_account,
    show_phone,
    utcnow,
)
from postroom_common import Priority, ValidationError
from postroom_common.checks import later
from storage import Storage

__all__ = ["add_arguments", "run"]

#: What `mask_phone` makes of a phone: a mask is never taken for a new account.
_MASK = re.compile(r".*\*.*~[0-9a-f]{4}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `postroom enqueue` to its subparser."""
    parser.add_argument("--account", required=True, metavar="ACCOUNT",
                        help="the sending account's phone (a known account's mask is accepted)")
    parser.add_argument("--to", required=True, metavar="USER", help="the recipient, in the sender's terms")
    parser.add_argument("--text", default="", help="the body (may be empty only with --attachment)")
    parser.add_argument("--priority", choices=[p.name.lower() for p in Priority], default="normal")
    parser.add_argument("--at", metavar="WHEN", default=None,
                        help="send no earlier than this: an ISO 8601 instant with its UTC offset "
                             "(2030-01-01T09:00:00Z), or a duration from now (30s, 5m, 2h, 1d)")
    parser.add_argument("--key", metavar="KEY", default=None,
                        help="idempotency key: a repeated key prints the first message's id")
    parser.add_argument("--attachment", metavar="REF", default=None,
                        help="an opaque reference for the sender")
    parser.add_argument("--max-attempts", metavar="N", type=int, default=None,
                        help="attempts before it ends failed (default: the supervisor's)")
    add_database_argument(parser)
    add_output_options(parser)


def run(args: argparse.Namespace, console: Console) -> int:
    """Enqueue; 0 once the message is committed, its id printed."""
    now = utcnow()
    scheduled_at = None if args.at is None else _instant(args.at, now)
    with Producer(database_url(args)) as producer:
        phone = _sending_account(producer.storage, args.account)
        message_id = producer.enqueue(
            phone=phone, user_id=args.to, text=args.text, priority=Priority[args.priority.upper()],
            attachment=args.attachment, scheduled_at=scheduled_at, max_attempts=args.max_attempts,
            idempotency_key=args.key)
    account = show_phone(args.unmasked)(phone)
    when = "" if scheduled_at is None else f", not before {scheduled_at.isoformat()}"
    report(args, console, f"Enqueued message {message_id} from {escape(account)}{when}.",
           {"id": message_id, "account": account,
            "scheduled_at": None if scheduled_at is None else scheduled_at.isoformat()})
    return 0


def _sending_account(storage: Storage, text: str) -> str:
    """A known account's phone (given whole or masked), or a new account's as given."""
    try:
        return resolve_account(storage, text)
    except ValidationError:
        if _MASK.fullmatch(text):
            raise  # a mask no account has: a typo, never a new account
        return text  # its first message: the door checks it as a phone


def _instant(text: str, now: datetime) -> datetime:
    """--at: an ISO 8601 instant with its offset, or a duration from `now`."""
    if text[:1].isdigit() and text[-1:] in "smhd":
        return later(now, parse_duration(text).total_seconds())
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(f"--at {text!r} is neither an ISO 8601 instant "
                              "(2030-01-01T09:00:00Z) nor a duration (30s, 5m, 2h, 1d)") from None
    if instant.tzinfo is None:
        raise ValidationError(f"--at {text!r} needs its UTC offset (Z, +02:00): a local time is ambiguous")
    return instant
