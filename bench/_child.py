"""Runs that need a process of their own: boot and memory (a fresh heap), database work (fsync counter).

`run_child("boot", {...})` runs `python -m bench._run boot '<json>'` (see `bench._run`),
which calls `boot` or `work` below and prints the result as JSON on its last line.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, cast

from bench._common import Deliveries, phone, rss_mb, spread, temp_dir, wait_until

ROOT = Path(__file__).resolve().parent.parent


# -- the parent's side --------------------------------------------------------------------


def run_child(task: str, args: dict[str, Any], timeout: float, count_fsyncs: bool = False) -> dict[str, Any]:
    """Run `task` in a fresh interpreter (with the fsync counter preloaded if asked); its JSON result."""
    command = [sys.executable, "-m", "bench._run", task, json.dumps(args)]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    counter = fsync_counter() if count_fsyncs else None
    if counter is not None:
        env["LD_PRELOAD"] = " ".join(filter(None, [str(counter), os.environ.get("LD_PRELOAD")]))
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not done.stdout.strip():
        sys.stderr.write(done.stderr[-5000:])
        raise ChildFailed(f"{task} exited {done.returncode}: {_last_error(done.stderr)}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


class ChildFailed(RuntimeError):
    """A child run exited without a result; the message is its exit code and last error line."""


def _last_error(stderr: str) -> str:
    """The last line that names an exception, else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b", line)]
    return (named or lines or ["no output"])[-1]


@functools.cache
def fsync_counter() -> Path | None:
    """bench/fsync_counter.c built into a shared library (once per run), or None without a compiler."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None or not sys.platform.startswith("linux"):
        return None
    directory = tempfile.mkdtemp(prefix="bench-fsync-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    target = Path(directory) / "fsync_counter.so"
    source = ROOT / "bench" / "fsync_counter.c"
    build = [compiler, "-shared", "-fPIC", "-O2", "-o", str(target), str(source), "-ldl"]
    if subprocess.run(build, capture_output=True, timeout=120).returncode != 0:
        return None
    return target


def fsyncs_so_far() -> int | None:
    """fsync + fdatasync calls of this process so far, if the counter is preloaded."""
    try:
        return int(ctypes.CDLL(None).bench_fsync_calls())
    except AttributeError:
        return None


# -- boot and memory ------------------------------------------------------------------------


def boot(args: dict[str, Any]) -> dict[str, Any]:
    """Start a system on an existing file; time the first send and every account's first send."""
    from bench.huey_baseline import HueyQueue
    from bench.seed import SeedQueue
    from supervisor import Message, Supervisor

    system, path, accounts = args["system"], Path(args["path"]), int(args["accounts"])
    deliveries = Deliveries(expected=1 << 62, accounts=accounts)
    before, _ = rss_mb()
    start = time.perf_counter()
    if system == "postroom":
        def send(message: Message) -> None:
            deliveries.record(int(message.text), message.phone)

        ref = Supervisor.start(database=f"sqlite:///{path}", sender=send)
        stop: Callable[[], object] = ref.stop
    elif system == "seed":
        seed = SeedQueue(path, deliveries)
        threading.Thread(target=seed.boot, daemon=True).start()  # the seed's boot, off the clock thread
        stop = seed.stop
    else:
        huey = HueyQueue(path, deliveries)
        huey.start()
        stop = huey.stop
    return _observe(deliveries, start, before, stop, args)


def sleeping_boot(args: dict[str, Any]) -> dict[str, Any]:
    """Start postroom on a file whose accounts all have work due tomorrow; how many actors it
    started, and how long a new message due now takes to be sent."""
    from supervisor import Enqueue, GetHealth, Health, Message, Supervisor

    deliveries = Deliveries(expected=1)

    def send(message: Message) -> None:
        deliveries.record(0, message.phone)

    start = time.perf_counter()
    ref = Supervisor.start(database=f"sqlite:///{args['path']}", sender=send)
    booted = time.perf_counter() - start
    running = cast(Health, ref.ask(GetHealth())).accounts_running
    rss, _ = rss_mb()
    asked = time.perf_counter()
    ref.ask(Enqueue(phone="+19999999999", user_id="u", text="now"))
    deliveries.wait(float(args["timeout"]))
    assert deliveries.first_at is not None
    sent_s = deliveries.first_at - asked
    ref.stop()
    return {"boot_s": booted, "actors": float(running), "new_message_ms": sent_s * 1000, "rss_mb": rss}


def rounds(args: dict[str, Any]) -> dict[str, Any]:
    """`rounds` rounds of one message to each of `accounts` accounts (one `Broadcast` a round,
    the same accounts each time), every round waiting until all of them have sent and idled
    out: RSS after the first round and after the last, and the most send threads alive."""
    from supervisor import (
        AccountSettings,
        Broadcast,
        GetHealth,
        Health,
        Message,
        Supervisor,
        SupervisorSettings,
    )

    accounts, timeout = int(args["accounts"]), float(args["timeout"])
    sent = threading.Semaphore(0)

    def send(message: Message) -> None:
        sent.release()

    settings = SupervisorSettings(account=AccountSettings(idle_timeout=float(args["idle_timeout"])))
    ref = Supervisor.start(database=f"sqlite:///{args['path']}", sender=send, settings=settings)
    recipients = [(phone(a), "u") for a in range(accounts)]
    rss: list[float] = []
    threads = 0
    for _ in range(int(args["rounds"])):
        ref.ask(Broadcast(recipients, text="x"), timeout=timeout)
        for _ in range(accounts):
            if not sent.acquire(timeout=timeout):
                raise TimeoutError(f"a round of {accounts:,} sends took over {timeout:g} s")
        threads = max(threads, sum(1 for t in threading.enumerate() if t.name == "postroom-send"))
        wait_until(lambda: cast(Health, ref.ask(GetHealth())).accounts_running == 0, timeout,
                   "every account idled out", interval=0.05)
        rss.append(rss_mb()[0])
    ref.stop()
    return {"rss_first_mb": rss[0], "rss_last_mb": rss[-1], "send_threads": float(threads)}


def _observe(deliveries: Deliveries, start: float, before: float, stop: Callable[[], object],
             args: dict[str, Any]) -> dict[str, Any]:
    """Wait for every account's first send (or the first send), read RSS, stop; what was seen.

    Past `timeout` the figures so far are returned with `timed_out`, so that a slow boot
    is reported with how far it got rather than as a crash.
    """
    timeout = float(args["timeout"])
    waited = deliveries.all_accounts.wait(timeout) if deliveries.accounts else _first(deliveries, timeout)
    if waited:
        time.sleep(float(args.get("settle", 0.0)))
    rss, peak = rss_mb()
    sent, accounts_sent = deliveries.count, deliveries.accounts_seen
    stop_s = _timed(stop, timeout) if waited else None
    return {
        "first_send_s": None if deliveries.first_at is None else deliveries.first_at - start,
        "all_accounts_s": None if deliveries.all_accounts_at is None else deliveries.all_accounts_at - start,
        "rss_mb": rss, "peak_rss_mb": peak, "rss_before_mb": before, "sent": sent,
        "accounts_sent": accounts_sent, "timed_out": not waited, "stop_s": stop_s,
    }


def _first(deliveries: Deliveries, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while deliveries.first_at is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def _timed(action: Callable[[], object], timeout: float) -> float | None:
    """Seconds `action` took on a helper thread, or None if it did not finish within `timeout`."""
    start = time.perf_counter()
    worker = threading.Thread(target=action, daemon=True)
    worker.start()
    worker.join(timeout)
    return None if worker.is_alive() else time.perf_counter() - start


# -- database work per message ----------------------------------------------------------------


class CountingConnection(sqlite3.Connection):
    """A sqlite3 connection that counts every statement SQLite runs on it, by first keyword."""

    counts: ClassVar[Counter[str]] = Counter()
    lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_trace_callback(_count)


def _count(sql: str) -> None:
    keyword = sql.split(None, 1)[0].upper() if sql.strip() else "?"
    with CountingConnection.lock:
        CountingConnection.counts[keyword] += 1


def work(args: dict[str, Any]) -> dict[str, Any]:
    """Scenario (a)'s workload, counting statements, commits and (with the counter preloaded) fsyncs."""
    from bench.systems import open_system

    items = spread(int(args["messages"]), int(args["accounts"]))
    deliveries = Deliveries(len(items))
    with temp_dir() as directory, open_system(args["system"], directory, deliveries,
                                              batch=int(args["batch"]), factory=CountingConnection) as queue:
        CountingConnection.counts.clear()
        fsyncs_before = fsyncs_so_far()
        queue.enqueue_all(items)
        deliveries.wait(float(args["timeout"]))
        queue.wait_finished(len(items), float(args["timeout"]))
        fsyncs_after = fsyncs_so_far()
        counts = dict(CountingConnection.counts)
    fsyncs = None if fsyncs_before is None or fsyncs_after is None else fsyncs_after - fsyncs_before
    return {"counts": counts, "messages": len(items), "fsyncs": fsyncs}
