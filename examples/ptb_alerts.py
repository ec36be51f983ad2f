"""python-telegram-bot: tell an admin chat when a broadcast's last message is done and some failed.

An outcome hook (`async def`, on PTB's loop) counts each broadcast's messages as they end;
when the last one has its outcome, failures among them are reported to the admin chat,
through postroom like any other message.

Run: TELEGRAM_TOKEN=123:abc ADMIN_CHAT=42 python examples/ptb_alerts.py (then /broadcast TEXT from it)
"""

from __future__ import annotations

import os
from collections import OrderedDict

from telegram import Update
from telegram.ext import CommandHandler, ContextTypes, MessageHandler, filters

from examples.ptb_bot import ACCOUNT, App
from examples.ptb_bot import build_application as build_bot
from supervisor import AsyncPostroom, Hooks, OutcomeEvent, Priority, Status

#: Outcomes kept for messages not yet known to be a broadcast's (their ids were still on the way).
EARLY_KEPT = 10_000


class Broadcasts:
    """Which broadcast each open message belongs to, and how many of each are left and failed.
    Used on the bot's loop only (the hook and the handlers), so it needs no lock."""

    def __init__(self) -> None:
        self.of_message: dict[int, str] = {}
        self.left: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.early: OrderedDict[int, Status] = OrderedDict()  # an outcome may beat its ids here

    def started(self, name: str, ids: list[int]) -> str | None:
        """A broadcast's ids came back: the alert if it has already ended."""
        self.left[name], self.failed[name] = len(ids), 0
        self.of_message.update(dict.fromkeys(ids, name))
        alerts = [self.ended(i, status) for i in ids if (status := self.early.pop(i, None)) is not None]
        return next((alert for alert in alerts if alert), None)

    def ended(self, message_id: int, status: Status) -> str | None:
        """A message's final outcome: the alert once it was its broadcast's last and some failed."""
        name = self.of_message.pop(message_id, None)
        if name is None:
            self.early[message_id] = status
            while len(self.early) > EARLY_KEPT:
                self.early.popitem(last=False)
            return None
        self.failed[name] += status is not Status.COMPLETED
        self.left[name] -= 1
        if self.left[name]:
            return None
        del self.left[name]
        failed = self.failed.pop(name)
        return f"broadcast {name}: {failed} message(s) not delivered" if failed else None


def build_application(token: str, database: str, admin_chat: int,
                      base_url: str = "https://api.telegram.org/bot") -> App:
    broadcasts = Broadcasts()

    async def on_outcome(event: OutcomeEvent) -> None:  # on PTB's loop, after the outcome committed
        alert = broadcasts.ended(event.message_id, event.status)
        if alert:
            await tell_admin(app.bot_data["postroom"], admin_chat, alert)

    app = build_bot(token, database, base_url, hooks=Hooks(on_outcome=on_outcome))

    async def command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if update.effective_message and update.effective_message.text:
            text = update.effective_message.text.removeprefix("/broadcast").strip()
            await broadcast(app, f"#{update.effective_message.message_id}", context.bot_data["chats"], text)

    async def remember(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if update.effective_chat and update.effective_chat.id not in context.bot_data["chats"]:
            context.bot_data["chats"].append(update.effective_chat.id)

    app.bot_data.update(broadcasts=broadcasts, admin_chat=admin_chat, chats=[])  # chats: who wrote to it
    app.add_handler(CommandHandler("broadcast", command, filters.Chat(admin_chat)), group=-1)
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, remember), group=1)
    return app


async def broadcast(app: App, name: str, chats: list[int], text: str) -> list[int]:
    """Queue `text` to every chat in one commit, watched by the outcome hook."""
    room: AsyncPostroom = app.bot_data["postroom"]
    ids = await room.broadcast([(ACCOUNT, str(chat)) for chat in chats], text=text, priority=Priority.LOW)
    alert = app.bot_data["broadcasts"].started(name, ids)
    if alert:
        await tell_admin(room, app.bot_data["admin_chat"], alert)
    return ids


async def tell_admin(room: AsyncPostroom, admin_chat: int, alert: str) -> None:
    await room.enqueue(phone=ACCOUNT, user_id=str(admin_chat), text=alert, priority=Priority.HIGH)


if __name__ == "__main__":
    database = os.environ.get("POSTROOM_DATABASE", "sqlite:///postroom.db")
    api = os.environ.get("TELEGRAM_API", "https://api.telegram.org")
    admin = int(os.environ["ADMIN_CHAT"])
    build_application(os.environ["TELEGRAM_TOKEN"], database, admin, f"{api}/bot").run_polling()
