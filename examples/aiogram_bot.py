"""aiogram 3: dp.startup starts postroom, dp.shutdown stops it; each bot of the dispatcher is one account.

Run: TELEGRAM_TOKENS=123:abc[,456:def] python examples/aiogram_bot.py
(optional: POSTROOM_DATABASE, TELEGRAM_API for a local Bot API server)
"""

from __future__ import annotations

import asyncio
import os

from aiogram import Bot, Dispatcher, F
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.types import Message as Incoming

from supervisor import AsyncPostroom, Message, Pacing, SupervisorSettings, sender_with_adapters

# Telegram's published limits (~30/s per bot, 1/s per chat); the server's retry_after still wins.
SETTINGS = SupervisorSettings(pacing=Pacing(rate=25, burst=5, per_recipient_interval=1.0))


def make_bot(token: str, api_url: str | None = None) -> Bot:
    api = TelegramAPIServer.from_base(api_url) if api_url else PRODUCTION  # a local Bot API server, or tests
    return Bot(token, session=AiohttpSession(api=api))


def build_dispatcher(database: str, *bots: Bot) -> Dispatcher:
    by_account = {str(bot.id): bot for bot in bots}  # postroom's "phone" is the bot's id: a pause is per bot
    dp = Dispatcher()

    async def send(message: Message) -> None:
        await by_account[message.phone].send_message(chat_id=int(message.user_id), text=message.text)

    async def on_startup(dispatcher: Dispatcher) -> None:  # handlers get it as their `postroom` argument
        # TelegramRetryAfter pauses the account; Forbidden, BadRequest, NotFound fail the message.
        room = await AsyncPostroom.start(database, sender_with_adapters(send), settings=SETTINGS)
        dispatcher["postroom"] = room

    async def on_shutdown(dispatcher: Dispatcher) -> None:  # runs before aiogram closes the bots' sessions
        await dispatcher["postroom"].stop()  # in-flight sends finish and are recorded

    dp.startup.register(on_startup)
    dp.shutdown.register(on_shutdown)
    dp.message.register(reply, F.text)
    return dp


async def reply(message: Incoming, bot: Bot, postroom: AsyncPostroom) -> None:
    # Not message.answer(): queued, the reply survives a restart and waits out flood control.
    await postroom.enqueue(phone=str(bot.id), user_id=str(message.chat.id), text=f"You said: {message.text}")


async def main(tokens: list[str], database: str, api_url: str | None = None) -> None:
    bots = [make_bot(token, api_url) for token in tokens]
    await build_dispatcher(database, *bots).start_polling(*bots)  # Ctrl-C: dp.shutdown, then sessions close


if __name__ == "__main__":
    database = os.environ.get("POSTROOM_DATABASE", "sqlite:///postroom.db")
    asyncio.run(main(os.environ["TELEGRAM_TOKENS"].split(","), database, os.environ.get("TELEGRAM_API")))
