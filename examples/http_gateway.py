"""A plain HTTP SMS gateway through httpx: postroom queues, the gateway's status codes decide what happens.

Run: GATEWAY_URL=https://sms.example GATEWAY_TOKEN=... python examples/http_gateway.py FROM TO TEXT
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator

import httpx
import structlog

from supervisor import AsyncPostroom, Message, Status, SupervisorSettings, sender_with_adapters

FINAL = {Status.COMPLETED, Status.FAILED, Status.CANCELLED}


@contextlib.asynccontextmanager
async def gateway(database: str, base_url: str, token: str,
                  settings: SupervisorSettings | None = None) -> AsyncIterator[AsyncPostroom]:
    """postroom sending through the gateway, each sender number an account; stopped before the client."""
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as http:

        async def send(message: Message) -> None:
            body = {"from": message.phone, "to": message.user_id, "text": message.text}
            # 429 (+ Retry-After) pauses the sender number, other 4xx fail the message, 5xx retry it.
            (await http.post("/messages", json=body)).raise_for_status()

        room = await AsyncPostroom.start(database, sender_with_adapters(send), settings=settings)
        try:
            yield room
        finally:
            await room.stop()  # in-flight sends finish on the still-open client and are recorded


async def main(sender: str, to: str, text: str) -> Status:
    """Send one SMS and wait for its outcome (a real program would keep the gateway open)."""
    database = os.environ.get("POSTROOM_DATABASE", "sqlite:///postroom.db")
    async with gateway(database, os.environ["GATEWAY_URL"], os.environ["GATEWAY_TOKEN"]) as room:
        message_id = await room.enqueue(phone=sender, user_id=to, text=text)
        while (status := (await room.get(message_id)).status) not in FINAL:
            await asyncio.sleep(0.1)
    return status


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: the result only
    print(asyncio.run(main(*sys.argv[1:4])))  # the status, never the number or the text
