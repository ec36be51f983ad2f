"""python-telegram-bot v21/22: replies go through postroom: they survive a crash, wait out flood control.

Run: TELEGRAM_TOKEN=123:abc python examples/ptb_bot.py   (optional: POSTROOM_DATABASE, TELEGRAM_API)
"""

from __future__ import annotations

import os
from typing import Any

from telegram import Update
from telegram.ext import Application, ContextTypes, MessageHandler, filters

from supervisor import AsyncPostroom, Hooks, Message, Pacing, SupervisorSettings, sender_with_adapters

# PTB >= 22.2 warns whenever RetryAfter.retry_after is read as an int; the adapters read a timedelta too.
os.environ.setdefault("PTB_TIMEDELTA", "true")
ACCOUNT = "ptb-bot"  # postroom's "phone": one sending account per bot token
# Telegram's published limits (~30/s per bot, 1/s per chat); the server's retry_after still wins.
SETTINGS = SupervisorSettings(pacing=Pacing(rate=25, burst=5, per_recipient_interval=1.0))
App = Application[Any, Any, Any, Any, Any, Any]  # its type parameters do not matter here


def build_application(token: str, database: str, base_url: str = "https://api.telegram.org/bot",
                      hooks: Hooks | None = None) -> App:
    async def post_init(app: App) -> None:  # PTB's loop is running: coroutine sends will run on it
        async def send(message: Message) -> None:
            await app.bot.send_message(chat_id=int(message.user_id), text=message.text)

        # RetryAfter pauses the account; Forbidden and BadRequest fail the message; TimedOut retries it.
        room = await AsyncPostroom.start(database, sender_with_adapters(send), settings=SETTINGS, hooks=hooks)
        app.bot_data["postroom"] = room

    async def stop_postroom(app: App) -> None:  # post_stop: before shutdown() closes the bot's HTTP client
        if "postroom" in app.bot_data:
            await app.bot_data["postroom"].stop()  # in-flight sends finish and are recorded; idempotent

    # post_shutdown too: when polling fails to start, PTB skips post_stop but not post_shutdown.
    builder = Application.builder().token(token).base_url(base_url).post_init(post_init)
    app = builder.post_stop(stop_postroom).post_shutdown(stop_postroom).build()
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, reply))
    return app


async def notify(room: AsyncPostroom, chat_id: int, text: str) -> int:
    """Queue a message to a chat; the id comes back once it is committed (then it will be sent)."""
    return await room.enqueue(phone=ACCOUNT, user_id=str(chat_id), text=text)


async def reply(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    chat, incoming = update.effective_chat, update.effective_message
    if chat and incoming:
        await notify(context.bot_data["postroom"], chat.id, f"You said: {incoming.text}")


if __name__ == "__main__":
    database = os.environ.get("POSTROOM_DATABASE", "sqlite:///postroom.db")
    api = os.environ.get("TELEGRAM_API", "https://api.telegram.org")  # or a local Bot API server
    build_application(os.environ["TELEGRAM_TOKEN"], database, f"{api}/bot").run_polling()  # Ctrl-C stops
