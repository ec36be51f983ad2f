"""Arguments every operator's command shares: the database, an account, JSON, durations.

The database comes from `--database URL` or the `POSTROOM_DATABASE` environment variable.
An ACCOUNT is accepted whole or masked as `postroom status` prints it (`+15*******01~c5af`):
the mask's hash tells one account from the others in the database. Durations are written
`30s`, `5m`, `2h` or `1d`. JSON goes to stdout as one document, instants in ISO 8601 UTC.
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console

from actors.privacy import mask_phone
from postroom_common import ValidationError
from postroom_common.checks import MAX_SECONDS, earlier
from storage import Storage, open_database

__all__ = [
    "DATABASE_ENV",
    "ShowPhone",
    "add_database_argument",
    "add_output_options",
    "database_url",
    "duration_arg",
    "duration_text",
    "json_text",
    "parse_duration",
    "parse_instant",
    "print_json",
    "report",
    "resolve_account",
    "safe_text",
    "seconds_arg",
    "show_phone",
    "utcnow",
    "writable_storage",
]

#: The environment variable read when `--database` is not given.
DATABASE_ENV = "POSTROOM_DATABASE"

#: How an account is shown: masked, or in full with --unmasked.
ShowPhone = Callable[[str], str]

# C0 and C1 controls but newline and tab, and the bidi controls that reorder what follows.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_DURATION = re.compile(r"([0-9]{1,15})([smhd])")  # ASCII digits: int() reads other scripts' too
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def utcnow() -> datetime:
    """The commands' one reading of the wall clock (UTC)."""
    return datetime.now(UTC)


# -- the database ---------------------------------------------------------------------------


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    """`--database URL`, optional on the command line when `POSTROOM_DATABASE` is set."""
    parser.add_argument("--database", metavar="URL", default=None,
                        help=f"database URL, e.g. sqlite:///postroom.db (default: ${DATABASE_ENV})")


def database_url(args: argparse.Namespace) -> str:
    """`--database`, else `POSTROOM_DATABASE`; `ValidationError` (exit 2) when neither is given."""
    url = args.database or os.environ.get(DATABASE_ENV, "").strip()
    if not url:
        raise ValidationError(f"no database given: pass --database URL or set {DATABASE_ENV} "
                              "(e.g. sqlite:///postroom.db)")
    return str(url)


@contextmanager
def writable_storage(args: argparse.Namespace) -> Iterator[Storage]:
    """The database of `args`, opened to write beside a running owner: never created (a
    missing SQLite file is `DatabaseNotFound`), its schema this postroom's (`SchemaMismatch`
    names `postroom migrate`), no owner lock taken; its messages readable with the keys of
    `POSTROOM_ENCRYPTION_KEYS` (`EncryptionKeyError` otherwise)."""
    storage = Storage(open_database(database_url(args), create=False))
    try:
        storage.check_schema()
        storage.check_keys()
        yield storage
    finally:
        storage.close_all()


# -- accounts -------------------------------------------------------------------------------


def show_phone(unmasked: bool) -> ShowPhone:
    """How accounts are printed: masked unless `unmasked`."""
    return str if unmasked else mask_phone


def resolve_account(store: Storage, account: str) -> str:
    """The phone an ACCOUNT argument names: the phone itself, or its mask as `status` prints
    it. `ValidationError` (exit 2) for an account the database does not know, or a mask two
    of its accounts share (then only the whole phone can say which)."""
    if store.has_account(account):
        return account
    matches = [phone for phone in store.accounts() if mask_phone(phone) == account]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValidationError(f"this masked account matches {len(matches)} accounts: "
                              "give the whole phone number (postroom status --unmasked)")
    # The argument is not repeated: an error line may reach a log, and it may be a whole phone.
    raise ValidationError("unknown account: no message or pause of this database has it "
                          "(give it whole or masked as postroom status prints it)")


def safe_text(text: str) -> str:
    """Text from the database made safe for a terminal: control characters (an escape
    sequence would drive the operator's terminal) and bidi controls written as Python
    escapes (`\\x1b`, `\\u202e`); newlines and tabs kept."""
    return _CONTROL.sub(lambda found: ascii(found.group())[1:-1], text)


# -- output ---------------------------------------------------------------------------------


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """--json for scripts, --unmasked for whole phone numbers."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--unmasked", action="store_true",
                        help="show whole phone numbers (default: masked, e.g. +15*******01~c5af)")


def report(args: argparse.Namespace, console: Console, text: str, data: dict[str, Any]) -> None:
    """`data` as JSON with --json, else `text` (rich markup; values escaped by the caller)."""
    if getattr(args, "json", False):
        print_json(data)
    else:
        console.print(text, highlight=False, soft_wrap=True)


def _json_value(value: Any) -> Any:
    """What `json` cannot encode by itself: instants (ISO 8601 UTC), enums, dataclasses."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def json_text(value: Any, *, indent: int | None = 2) -> str:
    """`value` as one JSON document (see `_json_value` for datetimes and enums), in ASCII:
    a text's C1 or bidi controls must not reach a terminal the JSON is read on."""
    return json.dumps(value, indent=indent, default=_json_value)


def print_json(value: Any, *, indent: int | None = 2) -> None:
    """Print `value` on stdout as one JSON document, not through rich (no markup, no wrapping)."""
    sys.stdout.write(json_text(value, indent=indent) + "\n")
    sys.stdout.flush()


# -- durations and instants -----------------------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """`30s`, `5m`, `2h` or `1d` as a timedelta; `ValidationError` for anything else (a sign,
    a fraction, NaN, no unit) and for more than 100 years."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise ValidationError(f"{text!r} is not a duration: write a whole number and a unit, "
                              "s, m, h or d (30s, 5m, 2h, 1d)")
    seconds = int(found.group(1)) * _UNIT_SECONDS[found.group(2)]
    if seconds > MAX_SECONDS:
        raise ValidationError(f"{text!r} is longer than 100 years")
    return timedelta(seconds=seconds)


def duration_arg(text: str) -> timedelta:
    """`parse_duration` for argparse's `type=`: its message reaches the usage error (exit 2)."""
    try:
        return parse_duration(text)
    except ValidationError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def seconds_arg(text: str) -> float:
    """For argparse's `type=`: seconds above 0, as a plain number (`0.5`, `2`) or a duration
    (`5m`), at most a day: an interval between two looks."""
    try:
        is_duration = _DURATION.fullmatch(text.strip()) is not None
        seconds = parse_duration(text).total_seconds() if is_duration else float(text)
    except (ValueError, ValidationError):  # ValidationError is a ValueError, named for the reader
        seconds = math.nan
    if not 0 < seconds <= _UNIT_SECONDS["d"]:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r} is not an interval: give seconds above 0 "
                                         "(0.5, 2) or a duration (30s, 5m), at most 1d")
    return seconds


def duration_text(delta: timedelta) -> str:
    """A span as people read it at a glance: `45s`, `3m 12s`, `2h 05m`, `3d 4h`."""
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def parse_instant(text: str, now: datetime) -> datetime:
    """An instant written in ISO 8601 (UTC when it names no offset) or as a duration ago
    (`2h`: two hours before `now`); `ValidationError` for anything else."""
    if _DURATION.fullmatch(text.strip()):
        return earlier(now, parse_duration(text))
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError(f"{text!r} is neither an ISO 8601 instant (2030-01-31T12:00:00Z) "
                              "nor a duration ago (30s, 5m, 2h, 1d)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
