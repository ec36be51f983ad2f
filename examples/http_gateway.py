"""A plain HTTP SMS gateway through httpx: postroom queues, the gateway's status codes decide what happens.

Two processes on one database, as a bot and its web app would run:

    GATEWAY_URL=https://sms.example GATEWAY_TOKEN=... python examples/http_gateway.py serve   # sends
    python examples/http_gateway.py FROM TO TEXT     # enqueues beside it, prints the outcome

The second is a producer (`AsyncProducer`): it runs no actor and never sends; the serving
process notices its message within `feed_poll_interval` (SQLite) or at once (PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import structlog

from supervisor import AsyncPostroom, AsyncProducer, Message, Status, SupervisorSettings, sender_with_adapters

FINAL = {Status.COMPLETED, Status.FAILED, Status.CANCELLED}


@contextlib.asynccontextmanager
async def gateway(database: str, base_url: str, token: str, settings: SupervisorSettings | None = None,
                  **options: Any) -> AsyncIterator[AsyncPostroom]:
    """postroom sending through the gateway, each sender number an account; stopped before the client.
    `options` go to `AsyncPostroom.start` (`hooks=`, `metrics=`)."""
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as http:

        async def send(message: Message) -> None:
            body = {"from": message.phone, "to": message.user_id, "text": message.text}
            # 429 (+ Retry-After) pauses the sender number, other 4xx fail the message, 5xx retry it.
            (await http.post("/messages", json=body)).raise_for_status()

        room = await AsyncPostroom.start(database, sender_with_adapters(send), settings=settings, **options)
        try:
            yield room
        finally:
            await room.stop()  # in-flight sends finish on the still-open client and are recorded


def database() -> str:
    return os.environ.get("POSTROOM_DATABASE", "sqlite:///postroom.db")


async def serve() -> None:
    """The bot: send through the gateway until SIGTERM or SIGINT, then stop gracefully."""
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    async with gateway(database(), os.environ["GATEWAY_URL"], os.environ["GATEWAY_TOKEN"]):
        print("serving", flush=True)
        await stopping.wait()


async def main(sender: str, to: str, text: str) -> Status:
    """The web app's side: enqueue one SMS beside the serving bot and wait for its outcome."""
    async with await AsyncProducer.open(database()) as producer:
        message_id = await producer.enqueue(phone=sender, user_id=to, text=text)
        while (status := (await producer.get(message_id)).status) not in FINAL:
            await asyncio.sleep(0.1)
    return status


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: the result only
    if sys.argv[1:] == ["serve"]:
        asyncio.run(serve())
    else:
        print(asyncio.run(main(*sys.argv[1:4])))  # the status, never the number or the text
