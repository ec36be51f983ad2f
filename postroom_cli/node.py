"""`postroom node`: run one supervisor on a database, sending through the user's sender,
until SIGTERM or SIGINT; then stop gracefully. What an operator runs under systemd or
Kubernetes.

    postroom node --database postgresql://bot@db/postroom --sender mybot.sending:send

The sender is `MODULE:ATTRIBUTE`, imported with the current directory on `sys.path` (as
`python -m` has it): a plain callable runs on the supervisor's send threads
(`Supervisor.start`), an `async def` one on an asyncio loop in the main thread
(`AsyncPostroom.start`). It and the settings are checked before the database is opened.

Exit codes: 0 after a graceful stop on a signal; 1 when the supervisor could not start
(`DatabaseLocked`, an unreachable database, a newer schema), stopped by itself, or did not
stop in time; 2 for a bad command line (`--sender`, a setting, no database).

Signals are handled in the main thread only, and the handler does nothing but put the
signal on a `queue.SimpleQueue` (reentrant, so safe in a handler: a `threading.Event` or a
`queue.Queue` takes a lock the interrupted main thread may hold). The main thread waits on
that queue, or on the loop's queue, never in a busy loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import importlib
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pykka
from rich.console import Console

from actors.aio import AsyncSender, is_coroutine_sender
from postroom_cli._args import add_database_argument, database_url, json_text, parse_duration, utcnow
from postroom_cli._output import fail
from postroom_common import Delivery, PostroomError, ValidationError
from postroom_common.logs import get_logger
from supervisor import (
    AccountSettings,
    AsyncPostroom,
    GetHealth,
    Health,
    NodeSettings,
    Sender,
    Supervisor,
    SupervisorSettings,
)

__all__ = [
    "EXIT_FAILED",
    "HealthFile",
    "SenderError",
    "add_arguments",
    "load_sender",
    "run",
    "settings_from",
    "shown_database",
]

log = get_logger("postroom.node")

#: Exit code when the node could not start, or its supervisor ended without being asked.
EXIT_FAILED = 1
#: The signals that stop a node gracefully.
SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Seconds a health file's `GetHealth` may take before that write is skipped.
HEALTH_TIMEOUT = 5.0
#: Seconds, beyond `stop_timeout`, a stop may take before the node gives up waiting on it: the
#: supervisor's own bound is `stop_timeout` plus a few seconds for the database (supervisor.py).
STOP_MARGIN = 30.0
#: The query parameters of a PostgreSQL URL that are secrets.
_SECRET_PARAMS = frozenset({"password", "passfile", "sslpassword"})


class SenderError(ValueError):
    """`--sender` does not name a callable: why, in a sentence."""


# -- the command line -----------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `postroom node` to its subparser."""
    add_database_argument(parser)
    parser.add_argument("--sender", required=True, metavar="MODULE:ATTRIBUTE",
                        help="your delivery code, e.g. mybot.sending:send: a callable taking a "
                             "Message, plain or async def (imported from the current directory too)")
    # The settings' options default to absent, so that `none` (no limit) and "not given" differ.
    unset = argparse.SUPPRESS
    parser.add_argument("--delivery", choices=[_option(d) for d in Delivery], default=unset,
                        help="what a message being sent at a crash becomes (default: at-least-once)")
    parser.add_argument("--account-threads", type=int, metavar="N", default=unset,
                        help="threads the actors take turns on, at least 2 (default: 8)")
    parser.add_argument("--send-threads", type=int, metavar="N", default=unset,
                        help="threads plain senders run on at most (default: 64 per CPU, at most 1024)")
    parser.add_argument("--send-timeout", type=_seconds_or_none, metavar="SECONDS", default=unset,
                        help="a send not returned after this long is retried (default: 60; none: no limit)")
    parser.add_argument("--stop-timeout", type=_seconds, metavar="SECONDS", default=unset,
                        help="how long a stop waits for the sends under way (default: 75)")
    parser.add_argument("--cleanup-interval", type=_seconds_or_none, metavar="SECONDS", default=unset,
                        help="between two cleanups of old finished rows (default: 3600; none: only "
                             "`postroom cleanup`)")
    parser.add_argument("--nodes", action="store_true",
                        help="PostgreSQL: run as one node of several, sharing the accounts by buckets "
                             "leased on the database's clock (README, Several nodes); without it this "
                             "node owns the database alone")
    parser.add_argument("--lease", type=_seconds, metavar="SECONDS", default=unset,
                        help="with --nodes: how long a node's lease lasts past its last renewal, how long "
                             "its buckets wait when it dies (default: 15)")
    parser.add_argument("--max-moves", type=int, metavar="N", default=unset,
                        help="with --nodes: buckets handed over to a joining node per renewal (default: 8)")
    parser.add_argument("--health-file", type=Path, metavar="PATH", default=None,
                        help="write GetHealth's answer there as JSON every --health-interval, for a "
                             "container probe; removed at stop")
    parser.add_argument("--health-interval", type=_seconds, metavar="SECONDS", default=5.0,
                        help="seconds between two writes of --health-file (default: 5)")


def _option(delivery: Delivery) -> str:
    """How `--delivery` spells a policy: `at-least-once`."""
    return delivery.value.replace("_", "-")


def _seconds(text: str) -> float:
    """Seconds as a number (`2.5`) or a duration (`30s`, `5m`); the range is the settings'
    to check (`SupervisorSettings` names the field)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_duration(text).total_seconds()
    except ValidationError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not seconds: give a number (2.5) or a "
                                         "duration (30s, 5m)") from error


def _seconds_or_none(text: str) -> float | None:
    """`_seconds`, or `none` for no limit."""
    return None if text.strip().lower() == "none" else _seconds(text)


def settings_from(args: argparse.Namespace) -> SupervisorSettings:
    """The `SupervisorSettings` the options ask for (defaults for those not given);
    `ValidationError` naming the field for a value out of range."""
    given = vars(args)
    fields: dict[str, Any] = {name: given[name] for name in _SETTINGS if name in given}
    if "delivery" in fields:
        fields["delivery"] = next(d for d in Delivery if _option(d) == fields["delivery"])
    if "send_timeout" in given:
        fields["account"] = replace(AccountSettings(), send_timeout=given["send_timeout"])
    node_fields = {name: given[name] for name in _NODE_SETTINGS if name in given}
    if given.get("nodes"):
        fields["nodes"] = NodeSettings(**node_fields)
    elif node_fields:
        raise ValidationError(f"--{next(iter(node_fields)).replace('_', '-')} is a setting of --nodes: "
                              "give --nodes too")
    return SupervisorSettings(**fields)


#: The options that are fields of `SupervisorSettings` under the same name.
_SETTINGS = ("delivery", "account_threads", "send_threads", "stop_timeout", "cleanup_interval")
#: The options that are fields of `NodeSettings` under the same name.
_NODE_SETTINGS = ("lease", "max_moves")


def load_sender(spec: str) -> Sender | AsyncSender:
    """The callable `MODULE:ATTRIBUTE` names (ATTRIBUTE may be dotted: `bot:client.send`),
    imported with the current directory on `sys.path`; `SenderError` saying what failed."""
    module_name, _, attribute = spec.partition(":")
    if not module_name.strip() or not attribute.strip():
        raise SenderError("give it as MODULE:ATTRIBUTE, e.g. mybot.sending:send")
    module = _import(module_name.strip())
    target: Any = module
    for part in attribute.strip().split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SenderError(f"module {module.__name__!r} has no attribute {attribute.strip()!r}") from None
    if not callable(target):
        raise SenderError(f"{attribute.strip()!r} is not callable (it is a {type(target).__name__})")
    return target  # type: ignore[no-any-return]


def _import(name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:  # the console script's path lacks it
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and (name == error.name or name.startswith(f"{error.name}.")):
            raise SenderError(f"module {name!r} not found (from {cwd} and the installed packages)") from None
        raise SenderError(f"importing module {name!r} failed: {type(error).__name__}: {error}") from error
    except Exception as error:  # whatever the user's module raises at import is reported (exit 2)
        raise SenderError(f"importing module {name!r} failed: {type(error).__name__}: {error}") from error


def shown_database(url: str) -> str:
    """The database as logs show it: a SQLite URL as it is, a server URL without its
    password (in the user part or as a query parameter)."""
    if url.startswith("sqlite:"):
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = urlencode([(key, "***" if key.lower() in _SECRET_PARAMS else value)
                       for key, value in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


# -- the health file ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthFile:
    """Where `GetHealth`'s answer is written for a probe, and how often."""

    path: Path
    """The file; written as a temporary file beside it, then renamed over it (atomic)."""
    interval: float
    """Seconds between two writes."""

    def check(self) -> None:
        """`ValidationError` (exit 2, before the database is opened) if the file's directory
        does not exist: a probe would find nothing and the node would never say why."""
        if not 0 < self.interval <= 86_400:
            raise ValidationError(f"--health-interval must be above 0 s and at most a day, "
                                  f"not {self.interval}")
        if not self.path.parent.is_dir():
            raise ValidationError(f"--health-file: the directory {self.path.parent} does not exist")

    def write(self, health: Health) -> None:
        """One JSON object: `updated_at` (ISO 8601 UTC), `pid` and `Health`'s fields."""
        data = {"updated_at": utcnow(), "pid": os.getpid(), **asdict(health)}
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json_text(data, indent=None) + "\n", encoding="ascii")
        os.replace(temporary, self.path)

    def remove(self) -> None:
        """Gone, so a probe no longer finds the node healthy."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# -- running --------------------------------------------------------------------------------


def run(args: argparse.Namespace, console: Console) -> int:
    """Run a node until a signal stops it; the exit code (see the module's docstring)."""
    try:
        sender = load_sender(args.sender)
    except SenderError as error:
        return fail(f"--sender {args.sender}: {error}")
    try:
        node = _Node(database_url(args), args.sender, settings_from(args), _health_file(args))
    except ValidationError as error:
        return fail(str(error))
    try:
        return _run_on_loop(node, sender) if is_coroutine_sender(sender) else _run_on_threads(node, sender)
    except ValidationError as error:  # the URL, found when the database is opened
        return fail(f"{type(error).__name__}: {error}")
    except (PostroomError, OSError, pykka.ActorDeadError) as error:
        fail(f"{type(error).__name__}: {error}")
        return EXIT_FAILED


def _health_file(args: argparse.Namespace) -> HealthFile | None:
    if args.health_file is None:
        return None
    health = HealthFile(args.health_file, args.health_interval)
    health.check()
    return health


class Step(enum.Enum):
    """What the driver does after an event."""

    WAIT = "wait"  # keep waiting
    STOP = "stop"  # begin the graceful stop
    DONE = "done"  # exit 0: stopped as asked
    FAILED = "failed"  # exit 1: ended without being asked, or the stop overran


class _Ended:
    """The supervisor has stopped and released the database (or given up waiting for it)."""


_ENDED = _Ended()


class _Node:
    """What a node decides at each event, the same for both drivers; it logs, and writes
    nothing else (the drivers start and stop the supervisor and write the health file)."""

    def __init__(self, url: str, spec: str, settings: SupervisorSettings, health: HealthFile | None) -> None:
        self.url = url
        self.spec = spec
        self.settings = settings
        self.health = health
        self.signal: str | None = None  # the signal that began the stop
        self.stop_deadline: float | None = None  # monotonic

    def started(self, mode: str) -> None:
        log.info("node.started", database=shown_database(self.url), sender=self.spec, mode=mode,
                 pid=os.getpid(), delivery=self.settings.delivery.value,
                 stop_timeout=self.settings.stop_timeout,
                 health_file=None if self.health is None else str(self.health.path))

    def timeout(self) -> float | None:
        """How long to wait for the next event: until the next health write while running,
        until the stop is overdue while stopping."""
        if self.stop_deadline is not None:
            return max(0.0, self.stop_deadline - time.monotonic())
        return None if self.health is None else self.health.interval

    def on_timeout(self) -> Step:
        """No event within `timeout()`: a health write is due (WAIT), or the stop overran."""
        if self.stop_deadline is None:
            return Step.WAIT
        log.error("node.stop_overdue", waited=self.settings.stop_timeout + STOP_MARGIN,
                  left="what is still in flight stays processing until the next start settles it")
        return Step.FAILED

    def on_event(self, event: object) -> Step:
        if event is _ENDED:
            return self._ended()
        assert isinstance(event, int)
        name = signal.Signals(event).name
        if self.signal is not None:
            log.info("node.signal_ignored", signal=name, stopping_since=self.signal,
                     reason="already stopping, within stop_timeout")
            return Step.WAIT
        self.signal = name
        self.stop_deadline = time.monotonic() + self.settings.stop_timeout + STOP_MARGIN
        log.info("node.stopping", signal=name, stop_timeout=self.settings.stop_timeout)
        if self.health is not None:
            self.health.remove()  # a readiness probe sees the node going at once
        return Step.STOP

    def _ended(self) -> Step:
        if self.signal is not None:
            log.info("node.stopped", signal=self.signal)
            return Step.DONE
        log.error("node.supervisor_ended", left="the supervisor stopped without being asked "
                  "(its event loop closed, or a fatal error: see the lines above)")
        return Step.FAILED

    def finish(self, step: Step) -> int:
        if self.health is not None:
            self.health.remove()
        if step is Step.DONE:
            return 0
        fail("the supervisor stopped by itself" if self.signal is None
             else "the supervisor did not stop within its stop_timeout and a margin")
        return EXIT_FAILED


def _run_on_threads(node: _Node, sender: Sender) -> int:
    """A plain sender: the supervisor on its own threads; the main thread waits for events."""
    events: queue.SimpleQueue[object] = queue.SimpleQueue()
    with _signals_to(events.put):
        ref = Supervisor.start(node.url, sender, settings=node.settings)
        _when_ended(ref, lambda: events.put(_ENDED), node.settings.stop_timeout + STOP_MARGIN)
        node.started("threads")
        step = Step.WAIT
        while step not in (Step.DONE, Step.FAILED):
            try:
                step = node.on_event(events.get(timeout=node.timeout()))
            except queue.Empty:
                step = node.on_timeout()
                if step is Step.WAIT:
                    _write_health(node, _ask_health(ref))
            if step is Step.STOP:
                ref.stop(block=False)  # the end comes as _ENDED, once the database is released
        return node.finish(step)


@contextlib.contextmanager
def _signals_to(put: Callable[[int], None]) -> Iterator[None]:
    """SIGTERM and SIGINT put their number with `put` (SimpleQueue.put: safe in a handler),
    until the block ends; the former handlers are put back then."""
    former = {signum: signal.signal(signum, lambda signum, _frame: put(signum)) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in former.items():
            signal.signal(signum, handler)


def _when_ended(ref: pykka.ActorRef[Supervisor], call: Callable[[], None], bound: float) -> None:
    """Call `call` from a daemon thread once the supervisor has stopped and released the
    database (at most `bound` seconds after it stopped taking mail)."""
    # The supervisor's `closed` is set at the end of its on_stop; pykka's ref holds the actor
    # weakly, and `actor_stopped` alone is set before on_stop begins.
    actor = ref._actor_weakref()
    closed = actor.closed if actor is not None else None

    def wait() -> None:
        ref.actor_stopped.wait()
        if closed is not None:
            closed.wait(bound)
        call()

    threading.Thread(target=wait, name="postroom-node-watch", daemon=True).start()


def _ask_health(ref: pykka.ActorRef[Supervisor]) -> Health | Exception:
    try:
        health: Health = ref.ask(GetHealth(), block=True, timeout=HEALTH_TIMEOUT)
        return health
    except (PostroomError, pykka.Timeout, pykka.ActorDeadError) as error:
        return error


def _write_health(node: _Node, health: Health | Exception) -> None:
    """Write `health` to the node's health file; an error getting or writing it is logged, and
    the file keeps its last `updated_at` (a probe that checks its age notices)."""
    assert node.health is not None
    error = health if isinstance(health, Exception) else None
    if not isinstance(health, Exception):
        try:
            node.health.write(health)
        except OSError as failure:
            error = failure
    if error is not None:
        log.warning("node.health_not_written", error=f"{type(error).__name__}: {error}")


def _run_on_loop(node: _Node, sender: AsyncSender) -> int:
    """An `async def` sender: an asyncio loop in the main thread, the sends on it."""
    return asyncio.run(_serve_on_loop(node, sender))


async def _serve_on_loop(node: _Node, sender: AsyncSender) -> int:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[object] = asyncio.Queue()
    for signum in SIGNALS:
        loop.add_signal_handler(signum, events.put_nowait, signum)
    try:
        room = await AsyncPostroom.start(node.url, sender, settings=node.settings)
        _when_ended(room.ref, lambda: _call_soon(loop, events.put_nowait, _ENDED),
                    node.settings.stop_timeout + STOP_MARGIN)
        node.started("asyncio")
        return await _wait_on_loop(node, room, events)
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)


async def _wait_on_loop(node: _Node, room: AsyncPostroom, events: asyncio.Queue[object]) -> int:
    stopping: asyncio.Task[None] | None = None
    step = Step.WAIT
    while step not in (Step.DONE, Step.FAILED):
        try:
            step = node.on_event(await asyncio.wait_for(events.get(), node.timeout()))
        except TimeoutError:
            step = node.on_timeout()
            if step is Step.WAIT:
                _write_health(node, await _health_on_loop(room))
        if step is Step.STOP:
            stopping = asyncio.create_task(room.stop())  # its end comes as _ENDED
    if stopping is not None and step is Step.DONE:
        await stopping
    return node.finish(step)


async def _health_on_loop(room: AsyncPostroom) -> Health | Exception:
    try:
        return await asyncio.wait_for(room.health(), HEALTH_TIMEOUT)
    except TimeoutError:
        return pykka.Timeout(f"GetHealth not answered within {HEALTH_TIMEOUT} s")
    except (PostroomError, pykka.ActorDeadError) as error:
        return error


def _call_soon(loop: asyncio.AbstractEventLoop, call: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
        loop.call_soon_threadsafe(call, *args)

