"""The `postroom` command line: `postroom demo`, `node`, `migrate`, the operator's reads (`status`,
`list`, `inspect`, `health`) and writes (`enqueue`, `requeue`, `cancel`, `pause`, `resume`,
`cleanup`, `rotate-key`)."""

from __future__ import annotations

import argparse
import importlib.metadata
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

import pykka
from rich.console import Console

from postroom_cli import (
    cancel,
    cleanup,
    demo,
    enqueue,
    health,
    inspection,
    listing,
    migrate,
    node,
    pause,
    requeue,
    resume,
    rotate_key,
    status,
)
from postroom_cli._output import fail
from postroom_cli.logconfig import FORMATS, LEVELS, configure_logging
from postroom_common import PostroomError

__all__ = ["build_parser", "main", "version"]

#: A subcommand: parsed arguments and the console for its output in, exit code out.
Command = Callable[[argparse.Namespace, Console], int]

#: Log level when --log-level is not given: the demo keeps its progress display readable
#: (its rate limits are counted there; --verbose logs each one as well).
_DEFAULT_LEVELS = {"demo": "error", "status": "info", "resume": "info", "migrate": "info",
                   "list": "info", "inspect": "info", "health": "info", "node": "info",
                   **dict.fromkeys(("enqueue", "requeue", "cancel", "pause", "cleanup", "rotate-key"),
                                   "info")}
_VERBOSE_LEVEL = "warning"
_EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format, level=_log_level(args))
    command: Command = args.run
    try:
        return command(args, Console(stderr=False))
    except (PostroomError, OSError, pykka.ActorDeadError, pykka.Timeout) as error:
        return fail(f"{type(error).__name__}: {error}")
    except KeyboardInterrupt:
        return _EXIT_INTERRUPTED


def _log_level(args: argparse.Namespace) -> str:
    """--log-level if given, else the command's default (lowered by the demo's --verbose)."""
    if args.log_level:
        return str(args.log_level)
    return _VERBOSE_LEVEL if getattr(args, "verbose", False) else _DEFAULT_LEVELS[args.command]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `postroom` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="postroom", description="A durable outbound message queue for bots.")
    _add_logging_options(parser, defaults=True)
    parser.add_argument("--version", action="version", version=f"postroom {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_command(commands, "demo", demo.add_arguments, demo.run,
                 "run the queue against a simulated messaging platform, on a database only "
                 "the demo created")
    _add_command(commands, "status", status.add_arguments, status.run,
                 "print counts by status and account, due and scheduled messages, paused accounts "
                 "and the owner (read-only, beside a running supervisor)")
    _add_command(commands, "list", listing.add_arguments, listing.run,
                 "list messages by account, status, priority, age or error, a page at a time (read-only)")
    _add_command(commands, "inspect", inspection.add_arguments, inspection.run,
                 "show one message, every field, and its attempts (read-only)")
    _add_command(commands, "health", health.add_arguments, health.run,
                 "check the queue for a health probe: exit 0 healthy, 1 degraded, 2 unreachable")
    _add_command(commands, "resume", resume.add_arguments, resume.run,
                 "lift an account's pause, a suspension until lifted included (works beside "
                 "a running supervisor)")
    _add_write_commands(commands)
    _add_command(commands, "node", node.add_arguments, node.run,
                 "run a supervisor on the database, sending through your sender, until SIGTERM or "
                 "SIGINT stops it gracefully")
    _add_command(commands, "migrate", migrate.add_arguments, migrate.run,
                 "create or upgrade the database's schema to this postroom's version (a newer "
                 "one is refused)")
    return parser


def version() -> str:
    """postroom's version: its installed metadata, else the pyproject.toml beside the package."""
    try:
        return importlib.metadata.version("postroom")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as file:
            return str(tomllib.load(file)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def _add_write_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The operator's writes: each beside a running supervisor, which obeys without a restart."""
    _add_command(commands, "enqueue", enqueue.add_arguments, enqueue.run,
                 "queue one message; prints its id once committed")
    _add_command(commands, "requeue", requeue.add_arguments, requeue.run,
                 "failed messages back to pending: one by id, or an account's, or by their error")
    _add_command(commands, "cancel", cancel.add_arguments, cancel.run,
                 "cancel a pending or retrying message, or all of an account's")
    _add_command(commands, "pause", pause.add_arguments, pause.run,
                 "stop an account sending, for a while (--for) or until `postroom resume`")
    _add_command(commands, "cleanup", cleanup.add_arguments, cleanup.run,
                 "delete finished messages older than the retention (or --older-than)")
    _add_command(commands, "rotate-key", rotate_key.add_arguments, rotate_key.run,
                 "encrypt every message's text and attachment again under the first key of "
                 "POSTROOM_ENCRYPTION_KEYS, a chunk at a time (beside a running supervisor; "
                 "run it again after an interruption)")


def _add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                 add_arguments: Callable[[argparse.ArgumentParser], None], run: Command,
                 help_text: str) -> None:
    sub = commands.add_parser(name, help=help_text, description=help_text)
    # Accepted after the subcommand too (`postroom demo --log-format json`).
    _add_logging_options(sub, defaults=False)
    add_arguments(sub)
    sub.set_defaults(run=run)


def _add_logging_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # On subparsers the defaults are suppressed, so they never undo the global option.
    parser.add_argument("--log-format", choices=FORMATS,
                        default="auto" if defaults else argparse.SUPPRESS,
                        help="console in a terminal, JSON lines otherwise (default: auto)")
    parser.add_argument("--log-level", choices=LEVELS,
                        default=None if defaults else argparse.SUPPRESS,
                        help="lowest level logged (default: error for demo, warning with its "
                             "--verbose, info otherwise)")
