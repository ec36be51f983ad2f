"""Telethon (a user account over MTProto): postroom starts after client.start(), stops when it disconnects.

Run: TG_API_ID=... TG_API_HASH=... TG_PHONE=+15550001 python examples/telethon_client.py
(optional: POSTROOM_DATABASE)
"""

from __future__ import annotations

import asyncio
import os

from telethon import TelegramClient, events

from supervisor import AsyncPostroom, Message, Pacing, SupervisorSettings, sender_with_adapters

# A user account must go far slower than a bot; Telegram publishes no figure, so stay well clear.
SETTINGS = SupervisorSettings(pacing=Pacing(rate=0.5, burst=3, per_recipient_interval=2.0))


def make_client(session: str, api_id: int, api_hash: str) -> TelegramClient:
    # flood_sleep_threshold=0: FloodWaitError reaches postroom, which pauses this account (and records
    # the pause) instead of Telethon sleeping inside send_message while the send timeout runs out.
    return TelegramClient(session, api_id, api_hash, flood_sleep_threshold=0)


async def run(client: TelegramClient, phone: str, database: str,
              settings: SupervisorSettings = SETTINGS) -> None:
    await client.start(phone=phone)  # asks for the login code on the first run

    async def send(message: Message) -> None:
        await client.send_message(int(message.user_id), message.text)

    # FloodWaitError pauses the account; UserIsBlocked, PeerIdInvalid fail the message; PeerFlood suspends.
    room = await AsyncPostroom.start(database, sender_with_adapters(send), settings=settings)

    async def on_message(event: events.NewMessage.Event) -> None:
        await room.enqueue(phone=phone, user_id=str(event.chat_id), text=f"You said: {event.raw_text}")

    client.add_event_handler(on_message, events.NewMessage(incoming=True))
    try:
        await client.run_until_disconnected()  # Ctrl-C or client.disconnect() ends it
    finally:
        await room.stop()  # a send cut off by the disconnect is recorded as retrying, sent again next run


if __name__ == "__main__":
    client = make_client("postroom", int(os.environ["TG_API_ID"]), os.environ["TG_API_HASH"])
    database = os.environ.get("POSTROOM_DATABASE", "sqlite:///postroom.db")
    asyncio.run(run(client, os.environ["TG_PHONE"], database))
