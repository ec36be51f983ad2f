"""`postroom health`: is the queue working? For container health checks and monitors.

Exit 0 healthy, 1 degraded, 2 unreachable. Each check is named with its result:
- `database`: reachable and readable (a connection, bounded by `--timeout`);
- `writable`: it would take a write, found without writing (SQLite: the file, its WAL and
  their directory writable by this user; PostgreSQL: not a standby, writes not read-only
  by default, INSERT and UPDATE granted on the queue);
- `schema`: this postroom's version (else the checks below are skipped);
- `owner`: a supervisor holds the owner lock now;
- `in_flight`: no message in `processing` longer than `--stuck-after` (the send timeout and a
  margin: longer means a send that nothing ends);
- `oldest_due`: no due message has waited longer than `--max-age` (accounts a pause holds
  aside: the next check counts the disabled ones);
- `disabled`: no account disabled until lifted, unless `--allow-disabled`.

Fast and bounded: every statement and the connection itself time out after `--timeout`,
and nothing is written, created or locked (SQLite is opened read-only; PostgreSQL on a
normal connection, to see whether writes would be refused, that runs only SELECTs).
"""

from __future__ import annotations

import argparse
import enum
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from postroom_cli._args import (
    add_database_argument,
    database_url,
    duration_arg,
    duration_text,
    print_json,
    seconds_arg,
    utcnow,
)
from postroom_cli.status import oldest_due, owner_text
from postroom_common import AccountPause, OpenWork, OwnerState, PostroomError, SchemaMismatch
from storage import SqliteSettings, Storage, open_database
from storage.schema import SCHEMA_VERSION

__all__ = ["Check", "HealthSettings", "Result", "Verdict", "add_arguments", "examine", "run"]


class Result(enum.StrEnum):
    """How one check came out."""

    OK = "ok"  # as it should be
    FAIL = "fail"  # not: the queue is degraded (unreachable, for `database`)
    UNKNOWN = "unknown"  # cannot be told here (no /proc/locks): counts as ok
    SKIPPED = "skipped"  # not checked: a check it needs failed


class Verdict(enum.IntEnum):
    """The whole answer, as the exit code."""

    HEALTHY = 0
    DEGRADED = 1
    UNREACHABLE = 2


@dataclass(frozen=True, slots=True)
class Check:
    """One named check and what it found."""

    name: str
    """Which check (stable: monitors match on it)."""
    result: Result
    """How it came out."""
    detail: str
    """What it found, in a sentence."""


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """The thresholds of `postroom health`."""

    stuck_after: timedelta = timedelta(seconds=75)
    """A message in `processing` longer than this is stuck: the send timeout (60 s) and a margin."""
    max_age: timedelta = timedelta(minutes=10)
    """A due message waiting longer than this means sends lag."""
    allow_disabled: bool = False
    """An account disabled until lifted is not a degradation."""
    timeout: float = 5.0
    """Seconds the connection and each statement may take."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `postroom health` to its subparser."""
    add_database_argument(parser)
    defaults = HealthSettings()
    parser.add_argument("--stuck-after", type=duration_arg, default=defaults.stuck_after, metavar="DURATION",
                        help="a message in processing longer than this is stuck (default 75s: the "
                             "send timeout and a margin)")
    parser.add_argument("--max-age", type=duration_arg, default=defaults.max_age, metavar="DURATION",
                        help="the longest a due message may wait (default 10m)")
    parser.add_argument("--allow-disabled", action="store_true",
                        help="an account disabled until lifted does not make the queue degraded")
    parser.add_argument("--timeout", type=seconds_arg, default=defaults.timeout, metavar="SECONDS",
                        help="how long the connection and each query may take (default 5)")
    parser.add_argument("--json", action="store_true", help="print the checks as one JSON document")


def run(args: argparse.Namespace, console: Console) -> int:
    """Run the checks, print them; the verdict is the exit code."""
    settings = HealthSettings(stuck_after=args.stuck_after, max_age=args.max_age,
                              allow_disabled=args.allow_disabled, timeout=args.timeout)
    checks = examine(database_url(args), settings, utcnow())
    verdict = _verdict(checks)
    if args.json:
        print_json({"status": verdict.name.lower(), "exit_code": int(verdict),
                    "checks": [{"name": c.name, "result": c.result, "detail": c.detail} for c in checks]})
    else:
        console.print(_table(checks, verdict))
    return int(verdict)


def examine(url: str, settings: HealthSettings, now: datetime) -> list[Check]:
    """Every check, in order; those a failed one makes meaningless are skipped."""
    try:
        # Counts and instants only, never a text: no encryption key needed.
        store = Storage(_open(url, settings.timeout), keys=None)
    except PostroomError as error:  # a missing SQLite file, a URL that is none
        return _rest_skipped([Check("database", Result.FAIL, _error_text(error))])
    try:
        return _examine(store, settings, now)
    finally:
        store.close()


def _examine(store: Storage, settings: HealthSettings, now: datetime) -> list[Check]:
    try:
        store.schema_version()  # the first read: does the database answer?
    except PostroomError as error:
        return _rest_skipped([Check("database", Result.FAIL, _error_text(error))])
    checks = [Check("database", Result.OK, "reachable and readable"),
              _guarded("writable", store.writable, _writable), _schema(store)]
    if checks[-1].result is not Result.OK:
        return _rest_skipped(checks)
    reads: list[tuple[str, Callable[[], Any], Callable[[Any], Check]]] = [
        ("owner", store.owner_state, _owner),
        ("in_flight", lambda: store.in_flight_before(now - settings.stuck_after),
         lambda found: _in_flight(found, settings, now)),
        ("oldest_due", lambda: (store.open_by_account(now), store.pauses(now)),
         lambda found: _oldest_due(found[0], found[1], settings, now)),
        ("disabled", lambda: store.pauses(now), lambda pauses: _disabled(pauses, settings)),
    ]
    return checks + [_guarded(name, read, judge) for name, read, judge in reads]


def _guarded(name: str, read: Callable[[], Any], judge: Callable[[Any], Check]) -> Check:
    """`judge(read())`, or a failed check naming the database error the read raised."""
    try:
        found = read()
    except PostroomError as error:
        return Check(name, Result.FAIL, _error_text(error))
    return replace(judge(found), name=name)


def _open(url: str, timeout: float) -> Any:
    """The database, every wait bounded by `timeout`: SQLite read-only (its busy timeout);
    PostgreSQL on a normal connection (whether it would take writes is a check) with a
    connect timeout and a statement timeout, unless the URL sets its own."""
    if url.startswith(("postgres://", "postgresql://")):
        return open_database(_bounded_url(url, timeout))
    return open_database(url, SqliteSettings(busy_timeout=timeout), read_only=True)


def _bounded_url(url: str, timeout: float) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    query.setdefault("connect_timeout", str(max(1, round(timeout))))  # libpq: whole seconds
    query.setdefault("options", f"-c statement_timeout={int(timeout * 1000)}")
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _schema(store: Storage) -> Check:
    try:
        store.check_schema()
    except SchemaMismatch as mismatch:
        return Check("schema", Result.FAIL, str(mismatch))
    except PostroomError as error:
        return Check("schema", Result.FAIL, _error_text(error))
    return Check("schema", Result.OK, f"version {SCHEMA_VERSION}")


# -- judging what was read ----------------------------------------------------------------


def _writable(why_not: str | None) -> Check:
    if why_not is None:
        return Check("writable", Result.OK, "it would take writes")
    return Check("writable", Result.FAIL, why_not)


def _owner(owner: OwnerState) -> Check:
    result = {True: Result.OK, False: Result.FAIL, None: Result.UNKNOWN}[owner.lock_held]
    return Check("owner", result, owner_text(owner))


def _in_flight(found: tuple[int, datetime | None], settings: HealthSettings, now: datetime) -> Check:
    count, oldest = found
    limit = duration_text(settings.stuck_after)
    if not count or oldest is None:
        return Check("in_flight", Result.OK, f"no message in processing for more than {limit}")
    return Check("in_flight", Result.FAIL, f"{count} messages in processing for more than {limit} "
                                           f"(the oldest for {duration_text(now - oldest)}): stuck sends")


def _oldest_due(work: list[OpenWork], pauses: list[AccountPause], settings: HealthSettings,
                now: datetime) -> Check:
    oldest = oldest_due(work, pauses)
    limit = duration_text(settings.max_age)
    if oldest is None or oldest.oldest_due_at is None:
        return Check("oldest_due", Result.OK, "no message is due")
    waited = now - oldest.oldest_due_at
    result = Result.OK if waited <= settings.max_age else Result.FAIL
    return Check("oldest_due", result, f"the oldest due message has waited {duration_text(waited)} "
                                       f"(at most {limit})")


def _disabled(pauses: list[AccountPause], settings: HealthSettings) -> Check:
    count = sum(1 for pause in pauses if pause.until is None)
    if not count:
        return Check("disabled", Result.OK, "no account is disabled")
    detail = f"{count} accounts disabled until lifted (postroom status lists them; postroom resume lifts)"
    return Check("disabled", Result.OK if settings.allow_disabled else Result.FAIL,
                 detail + (": allowed" if settings.allow_disabled else ""))


# -- the answer -----------------------------------------------------------------------------

_NAMES = ("database", "writable", "schema", "owner", "in_flight", "oldest_due", "disabled")


def _rest_skipped(checks: list[Check]) -> list[Check]:
    done = {check.name for check in checks}
    return checks + [Check(name, Result.SKIPPED, "not checked") for name in _NAMES if name not in done]


def _verdict(checks: list[Check]) -> Verdict:
    if any(c.name == "database" and c.result is Result.FAIL for c in checks):
        return Verdict.UNREACHABLE
    return Verdict.DEGRADED if any(c.result is Result.FAIL for c in checks) else Verdict.HEALTHY


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _table(checks: list[Check], verdict: Verdict) -> Table:
    styles = {Result.OK: "green", Result.FAIL: "bold red", Result.UNKNOWN: "yellow", Result.SKIPPED: "dim"}
    table = Table(title=f"postroom health: {verdict.name.lower()}", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("check", "result", "detail"):
        table.add_column(column, overflow="fold")
    for check in checks:
        table.add_row(check.name, f"[{styles[check.result]}]{check.result.value}[/]", escape(check.detail))
    return table
