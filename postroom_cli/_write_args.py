"""What the operator's write commands share: the database, accounts, durations, output.

`database_url`, `resolve_account` and `parse_duration` mean what `postroom_cli._args`'s
functions of the same names mean (the read commands' module, written in parallel): to be
folded into it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console

from actors.privacy import mask_phone
from postroom_common import ValidationError
from postroom_common.checks import MAX_SECONDS
from storage import Storage, open_database

__all__ = [
    "DATABASE_ENV",
    "ShowPhone",
    "add_database_option",
    "add_output_options",
    "database_url",
    "parse_duration",
    "report",
    "resolve_account",
    "show_phone",
    "writable_storage",
]

#: The environment variable naming the database when --database is not given.
DATABASE_ENV = "POSTROOM_DATABASE"
#: How an account is shown: masked, or in full with --unmasked.
ShowPhone = Callable[[str], str]

_DURATION = re.compile(r"([0-9]{1,15})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def add_database_option(parser: argparse.ArgumentParser) -> None:
    """--database URL, or POSTROOM_DATABASE (`database_url` reads them)."""
    parser.add_argument("--database", metavar="URL", default=None,
                        help=f"database URL, e.g. sqlite:///postroom.db (default: ${DATABASE_ENV})")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """--json for scripts, --unmasked for whole phone numbers."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--unmasked", action="store_true",
                        help="show whole phone numbers (default: masked, e.g. +15*******01~c5af)")


def database_url(args: argparse.Namespace) -> str:
    """--database, else $POSTROOM_DATABASE; `ValidationError` (exit 2) when neither is set."""
    url = getattr(args, "database", None) or os.environ.get(DATABASE_ENV, "")
    if not url.strip():
        raise ValidationError(f"no database: give --database URL or set {DATABASE_ENV}")
    return str(url)


@contextmanager
def writable_storage(args: argparse.Namespace) -> Iterator[Storage]:
    """The database of `args`, opened to write beside a running owner: never created (a
    missing SQLite file is `DatabaseNotFound`), its schema this postroom's (`SchemaMismatch`
    names `postroom migrate`), no owner lock taken."""
    storage = Storage(open_database(database_url(args), create=False))
    try:
        storage.check_schema()
        yield storage
    finally:
        storage.close_all()


def resolve_account(storage: Storage, text: str) -> str:
    """The phone an operator means: as given if the database knows it (messages or a pause in
    force), else the one account whose mask (`postroom status`) it is; `ValidationError`
    "unknown account" otherwise."""
    now = datetime.now(UTC)
    if storage.list_messages(text, limit=1) or storage.pause(text, now) is not None:
        return text
    known = set(storage.stats().by_account) | {pause.phone for pause in storage.pauses(now)}
    matches = sorted(phone for phone in known if mask_phone(phone) == text)
    if len(matches) > 1:  # the mask's hash is short: two accounts may share one
        raise ValidationError("this mask stands for several accounts: give the phone unmasked")
    if not matches:
        raise ValidationError("unknown account: the database holds no message and no pause of it "
                              "(give the phone as it was enqueued, or its mask as `postroom status` shows)")
    return matches[0]


def parse_duration(text: str) -> timedelta:
    """`30s`, `5m`, `2h`, `1d`: a whole number and a unit, at most 100 years; else `ValidationError`."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise ValidationError(f"{text!r} is not a duration: a whole number and a unit, "
                              "e.g. 30s, 5m, 2h or 1d")
    seconds = int(found[1]) * _UNIT_SECONDS[found[2]]
    if seconds > MAX_SECONDS:
        raise ValidationError(f"{text!r} is longer than 100 years")
    return timedelta(seconds=seconds)


def show_phone(args: argparse.Namespace) -> ShowPhone:
    """Masked, unless --unmasked."""
    return str if getattr(args, "unmasked", False) else mask_phone


def report(args: argparse.Namespace, console: Console, text: str, data: dict[str, Any]) -> None:
    """`data` as JSON with --json, else `text` (rich markup; values escaped by the caller)."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    else:
        console.print(text, highlight=False, soft_wrap=True)
