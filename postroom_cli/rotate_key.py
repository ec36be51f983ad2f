"""`postroom rotate-key`: every message's text and attachment under the first key of
`POSTROOM_ENCRYPTION_KEYS`, beside a running supervisor.

The rows still plain or under another key are read a chunk at a time (outside any
transaction), encrypted again, and written back in one short write transaction per chunk,
only their text and attachment and only where the text is still as read: a status or an
attempt a supervisor writes meanwhile stays as it wrote it. Killed at any instant it loses
nothing (each chunk commits whole or not at all), and run again it goes on: the rows already
under the first key are not selected. Once none is left, the other keys are forgotten
(`postroom_meta`), and processes may start without them.
"""

from __future__ import annotations

import argparse
import os
import time

from rich.console import Console

from postroom_cli._args import add_database_argument, report, writable_storage
from postroom_common import EncryptionKeyError
from postroom_common.logs import get_logger
from storage import Storage
from storage.crypto import KEYS_ENV, Keyring, sealed_again

__all__ = ["CHUNK", "PAUSE_ENV", "add_arguments", "rotate", "run"]

log = get_logger("postroom.cli.rotate_key")

#: Rows encrypted again per write transaction: few, so that each holds a SQLite file's write lock briefly.
CHUNK = 200
#: For tests only: seconds slept after each chunk (read once, at the start), so that a test
#: can kill the command half way. Unset in production.
PAUSE_ENV = "POSTROOM_TEST_ROTATE_PAUSE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `postroom rotate-key` to its subparser."""
    add_database_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace, console: Console) -> int:
    """Encrypt every message again under the first key; 0 once none is left under another."""
    pause = float(os.environ.get(PAUSE_ENV, "") or 0)
    with writable_storage(args) as storage:
        if storage.keys is None:
            raise EncryptionKeyError(f"no key to encrypt with: set {KEYS_ENV} (comma-separated "
                                     "Fernet keys, the new one first, the old ones after it)")
        written, forgotten = rotate(storage, storage.keys, pause)
    key = storage.keys.primary
    dropped = f" Keys no longer needed: {', '.join(forgotten)}." if forgotten else ""
    report(args, console, f"{written} message(s) encrypted again under key {key}.{dropped}",
           {"written": written, "key": key, "forgotten": forgotten})
    return 0


def rotate(storage: Storage, keys: Keyring, pause: float = 0.0) -> tuple[int, list[str]]:
    """Encrypt again, a chunk per transaction, every row not under the first key, until a
    whole pass finds none; (rows written, key ids forgotten)."""
    written, after = 0, 0
    while True:
        rows = storage.not_under_first_key(after, CHUNK)
        if not rows:
            with storage.write_transaction():
                forgotten = storage.forget_other_keys()
            if forgotten is not None:
                return written, forgotten
            after = 0  # a process wrote under an old key meanwhile: one more pass
            continue
        sealed = [(message_id, text, *sealed_again(text, attachment, keys))
                  for message_id, text, attachment in rows]
        with storage.write_transaction():
            written += storage.reencrypt(sealed)
        after = rows[-1][0]
        log.info("rotate_key.chunk", up_to_id=after, written=written)
        if pause:
            time.sleep(pause)
