"""Senders for `postroom node` in tests (tests/integration/test_cli_node.py), named on its
command line as `tests.integration.node_sender:ATTRIBUTE`.

Each appends `<pid> <message id> <user_id>` to the file named by `POSTROOM_NODE_TEST_OUT`,
one `write` per line on a file opened to append (whole lines, whichever thread sends).
"""

from __future__ import annotations

import asyncio
import os
import time

import pykka

from supervisor import Message, Supervisor

#: The environment variable naming the file the senders append to.
OUT_ENV = "POSTROOM_NODE_TEST_OUT"
#: Seconds `slow` and `slow_async` take over each send.
SLOW = 3.0  # long enough for a test to signal twice while one is under way, on a busy machine


def _record(message: Message) -> None:
    line = f"{os.getpid()} {message.id} {message.user_id}\n".encode()
    descriptor = os.open(os.environ[OUT_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


def send(message: Message) -> None:
    """Delivered at once."""
    _record(message)


async def send_async(message: Message) -> None:
    """Delivered on the node's event loop."""
    await asyncio.sleep(0)
    _record(message)


def slow(message: Message) -> None:
    """Delivered after SLOW seconds: a stop finds sends under way."""
    time.sleep(SLOW)
    _record(message)


async def slow_async(message: Message) -> None:
    """Delivered after SLOW seconds, on the node's event loop."""
    await asyncio.sleep(SLOW)
    _record(message)


def stop_supervisor(message: Message) -> None:
    """Stops the node's supervisor from inside, as a fatal error would, then delivers."""
    for ref in pykka.ActorRegistry.get_by_class(Supervisor):
        ref.stop(block=False)
    _record(message)


NOT_CALLABLE = "a string"
