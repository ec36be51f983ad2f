"""The examples, driven for real: the real libraries against stand-in servers, a real SQLite file.

python-telegram-bot and aiogram talk HTTP to a local stand-in Bot API that enforces Telegram's
limits; the HTTP gateway example talks to a scripted gateway. Telethon speaks MTProto, for
which no stand-in server is practical: its test replaces the client object with one whose
`send_message` raises Telethon's real errors (the classification path is the real one).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pykka
import pytest
import telegram.error
import telethon.errors
from aiogram import exceptions as aiogram_errors
from aiogram.methods import SendMessage
from telethon import events

from examples import aiogram_bot, http_gateway, ptb_alerts, ptb_bot, telethon_client
from supervisor import (
    AccountSettings,
    AccountSuspended,
    AsyncPostroom,
    BackoffPolicy,
    ListMessages,
    Message,
    PermanentError,
    RateLimited,
    SendTimeout,
    Status,
    SupervisorSettings,
    TransientError,
    classify,
)
from tests.examples.botapi_server import SLACK, BotApiServer, Refused, Sent
from tests.examples.conftest import BLOCKED, GATEWAY_TOKEN, GOOD_CHATS, UNKNOWN
from tests.examples.gateway_server import GatewayServer

ROOT = Path(__file__).resolve().parents[2]
FINAL = {Status.COMPLETED, Status.FAILED, Status.CANCELLED}
#: Each example test runs in a few seconds; this bounds one that hangs.
pytestmark = pytest.mark.timeout(60)


async def until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Wait on the loop (never blocking it) until `check()` (awaited if need be) is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


async def until_final(room: AsyncPostroom, ids: list[int], timeout: float = 20.0) -> list[Message]:
    """The messages, once every one of them is completed, failed or cancelled."""
    deadline = time.monotonic() + timeout
    while True:
        messages = [await room.get(i) for i in ids]
        if all(m.status in FINAL for m in messages):
            return messages
        if time.monotonic() > deadline:
            raise AssertionError(f"not final within {timeout} s: {[m.status for m in messages]}")
        await asyncio.sleep(0.02)


async def all_messages(room: AsyncPostroom, phone: str) -> list[Message]:
    return list(await room.ask(ListMessages(phone, limit=1000)))


async def stored(database: str, phone: str) -> list[Message]:
    """An account's messages as a new supervisor on the database finds them (nothing may be left to send)."""
    calls: list[Message] = []
    room = await AsyncPostroom.start(database, calls.append)
    try:
        return await all_messages(room, phone)
    finally:
        await room.stop()
        assert calls == []


async def _at_least(count: int, listing: Awaitable[list[Message]]) -> list[Message]:
    messages = await listing
    return messages if len(messages) >= count else []


def assert_paused_for_the_429(refused: list[Refused], sent: list[Sent], token: str) -> Refused:
    """The bot got a 429 and sent nothing until its retry_after ended, then went on promptly."""
    flood = next(r for r in refused if r.token == token and r.status == 429)
    assert flood.until is not None
    after = [s.at for s in sent if s.token == token and s.at > flood.at]
    assert after, "nothing was sent after the 429"
    assert min(after) >= flood.until - SLACK
    assert min(after) < flood.until + 1.0  # and it went on once the pause ended
    return flood


def assert_postroom_stopped(room: AsyncPostroom) -> None:
    """The supervisor and every actor it started are gone."""
    assert not room.ref.is_alive()
    assert pykka.ActorRegistry.get_all() == []


def run_polling(app: ptb_bot.App) -> None:
    """`run_polling` as a bot's main would call it, without signal handlers in the test process."""
    asyncio.set_event_loop(asyncio.new_event_loop())  # Python 3.12+ warns if get_event_loop() makes one
    try:
        app.run_polling(stop_signals=None)  # closes the loop when it returns
    finally:
        asyncio.set_event_loop(None)


def in_post_init(app: ptb_bot.App, watch: Callable[[ptb_bot.App], Awaitable[None]]) -> list[Exception]:
    """Run `watch(app)` beside the bot once post_init started postroom; it must stop the app."""
    errors: list[Exception] = []
    tasks: list[asyncio.Task[None]] = []
    started = app.post_init
    assert started is not None

    async def guarded() -> None:
        try:
            await until(lambda: app.running)
            await watch(app)
        except Exception as error:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(error)
        finally:
            app.stop_running()

    async def post_init(application: ptb_bot.App) -> None:
        await started(application)
        tasks.append(asyncio.get_running_loop().create_task(guarded()))

    app.post_init = post_init
    return errors


# python-telegram-bot

PTB_TOKEN = "1111:ptb-secret"


def test_ptb_bot_sends_replies_once_in_order_and_honours_retry_after(
    botapi: BotApiServer, sqlite_url: str
) -> None:
    """PTB handlers queue replies; each reaches the chat once, in order; blocked and unknown chats
    fail for good; a 429 pauses the bot (nothing sent until retry_after ends, the attempt given
    back); stopping the application stops postroom."""
    app = ptb_bot.build_application(PTB_TOKEN, sqlite_url, base_url=f"{botapi.url}/bot")
    for i in range(3):
        for chat in GOOD_CHATS:
            botapi.push(PTB_TOKEN, chat, f"{chat}-{i}")
    botapi.flood(PTB_TOKEN, retry_after=1)
    seen: dict[str, Any] = {}

    async def watch(app: ptb_bot.App) -> None:
        room = seen["room"] = app.bot_data["postroom"]
        failing = [await ptb_bot.notify(room, chat, "never arrives") for chat in (BLOCKED, UNKNOWN)]
        await until(lambda: sum(map(len, botapi.texts(PTB_TOKEN).values())) == 9)
        seen["failing"] = await until_final(room, failing)
        seen["all"] = await until_final(room, [m.id for m in await all_messages(room, ptb_bot.ACCOUNT)])

    errors = in_post_init(app, watch)
    run_polling(app)
    if errors:
        raise errors[0]

    expected = {chat: [f"You said: {chat}-{i}" for i in range(3)] for chat in GOOD_CHATS}
    assert botapi.texts(PTB_TOKEN) == expected  # once each, in the order the users wrote
    blocked, unknown = seen["failing"]
    assert (blocked.status, blocked.attempts, blocked.last_error) == (
        Status.FAILED, 1, "PermanentError: Forbidden: bot was blocked by the user")
    assert (unknown.status, unknown.attempts, unknown.last_error) == (
        Status.FAILED, 1, "PermanentError: BadRequest: chat not found")
    sent, refused, violations = botapi.snapshot()
    assert violations == []
    assert_paused_for_the_429(refused, sent, PTB_TOKEN)
    replies = [m for m in seen["all"] if m.user_id != str(BLOCKED) and m.user_id != str(UNKNOWN)]
    assert [(m.status, m.attempts) for m in replies] == [(Status.COMPLETED, 1)] * 9  # the 429 not counted
    assert_postroom_stopped(seen["room"])


def test_ptb_alerts_tell_the_admin_chat_once_a_broadcasts_last_message_failed(
    botapi: BotApiServer, sqlite_url: str
) -> None:
    """The outcome hook counts a broadcast's messages as they end: once the last one has, the
    admin chat is told how many were not delivered (the blocked chat's), and only then; a
    broadcast delivered whole tells it nothing."""
    admin, *chats = GOOD_CHATS
    app = ptb_alerts.build_application(PTB_TOKEN, sqlite_url, admin, base_url=f"{botapi.url}/bot")
    seen: dict[str, Any] = {}

    async def watch(app: ptb_bot.App) -> None:
        room = seen["room"] = app.bot_data["postroom"]
        whole = await ptb_alerts.broadcast(app, "whole", chats, "all good")
        await until_final(room, whole)
        partial = await ptb_alerts.broadcast(app, "partial", [*chats, BLOCKED], "launch")
        await until(lambda: botapi.texts(PTB_TOKEN).get(admin))
        seen["partial"] = await until_final(room, partial)

    errors = in_post_init(app, watch)
    run_polling(app)
    if errors:
        raise errors[0]
    texts = botapi.texts(PTB_TOKEN)
    assert texts[admin] == ["broadcast partial: 1 message(s) not delivered"]
    assert all(texts[chat] == ["all good", "launch"] for chat in chats)
    assert [m.status for m in seen["partial"]] == [Status.COMPLETED, Status.COMPLETED, Status.FAILED]
    assert_postroom_stopped(seen["room"])


def test_ptb_bot_main_stops_postroom_on_sigint(botapi: BotApiServer, tmp_path: Path) -> None:
    """`python examples/ptb_bot.py` answers through postroom; Ctrl-C stops it cleanly and the
    process exits (no forgotten thread keeps it alive)."""
    database = f"sqlite:///{tmp_path}/ptb.db"
    env = {**os.environ, "TELEGRAM_TOKEN": PTB_TOKEN, "TELEGRAM_API": botapi.url,
           "POSTROOM_DATABASE": database}
    process = subprocess.Popen([sys.executable, "examples/ptb_bot.py"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        asyncio.run(until(lambda: (PTB_TOKEN, "getUpdates") in botapi.methods or process.poll() is not None))
        botapi.push(PTB_TOKEN, GOOD_CHATS[0], "hello")
        asyncio.run(until(lambda: botapi.texts(PTB_TOKEN) or process.poll() is not None))
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output.decode(errors="replace")
    assert botapi.texts(PTB_TOKEN) == {GOOD_CHATS[0]: ["You said: hello"]}

    assert [(m.status, m.attempts) for m in asyncio.run(stored(database, ptb_bot.ACCOUNT))] == [
        (Status.COMPLETED, 1)]


# aiogram

AIOGRAM_A, AIOGRAM_B = "2222:aiogram-a", "3333:aiogram-b"


def test_aiogram_bot_pauses_only_the_rate_limited_bot(botapi: BotApiServer, sqlite_url: str) -> None:
    """Two bots on one dispatcher are two accounts: a 429 to bot A pauses A alone (nothing sent
    until its retry_after ends) while bot B keeps sending; every reply arrives once, in enqueue
    order per chat; blocked and unknown chats fail; dp.shutdown stops postroom."""

    async def scenario() -> dict[str, Any]:
        bot_a, bot_b = (aiogram_bot.make_bot(token, botapi.url) for token in (AIOGRAM_A, AIOGRAM_B))
        dp = aiogram_bot.build_dispatcher(sqlite_url, bot_a, bot_b)
        botapi.flood(AIOGRAM_A, retry_after=1)
        for i in range(3):
            for chat in GOOD_CHATS:
                botapi.push(AIOGRAM_A, chat, f"{chat}-{i}")
        botapi.push(AIOGRAM_A, BLOCKED, "then blocked the bot")
        polling = asyncio.create_task(dp.start_polling(bot_a, bot_b, handle_signals=False))
        try:
            await until(lambda: "postroom" in dp.workflow_data)
            room: AsyncPostroom = dp["postroom"]
            flood = await until(lambda: next(
                (r for r in botapi.snapshot()[1] if r.token == AIOGRAM_A and r.status == 429), None))
            # While A waits out its retry_after, B is asked to send.
            b_ids = [await room.enqueue(phone=str(bot_b.id), user_id=str(chat), text=f"from B to {chat}")
                     for chat in GOOD_CHATS]
            unknown = await room.enqueue(phone=str(bot_a.id), user_id=str(UNKNOWN), text="never arrives")
            await until(lambda: sum(map(len, botapi.texts(AIOGRAM_A).values())) == 9)
            b_messages = await until_final(room, b_ids)
            a_queued = await until(lambda: _at_least(11, all_messages(room, str(bot_a.id))))
            a_messages = await until_final(room, [m.id for m in a_queued])
            assert unknown in [m.id for m in a_messages]
            return {"room": room, "flood": flood, "a": a_messages, "b": b_messages}
        finally:
            if not polling.done():
                await dp.stop_polling()
            await polling

    seen = asyncio.run(scenario())
    sent, refused, violations = botapi.snapshot()
    assert violations == []
    flood = assert_paused_for_the_429(refused, sent, AIOGRAM_A)
    assert flood == seen["flood"]
    assert any(s.token == AIOGRAM_B and flood.at < s.at < (flood.until or 0) for s in sent), "B waited for A"
    assert botapi.texts(AIOGRAM_B) == {chat: [f"from B to {chat}"] for chat in GOOD_CHATS}
    assert [m.status for m in seen["b"]] == [Status.COMPLETED] * 3
    by_status: dict[Status, list[Message]] = {}
    for message in seen["a"]:
        by_status.setdefault(message.status, []).append(message)
    assert sorted(m.user_id for m in by_status[Status.FAILED]) == [str(BLOCKED), str(UNKNOWN)]
    completed = by_status[Status.COMPLETED]
    assert [m.attempts for m in completed] == [1] * 9  # the 429 attempt was given back
    # aiogram handles updates concurrently, so enqueue order (the id) is the order to keep.
    texts = botapi.texts(AIOGRAM_A)
    for chat in GOOD_CHATS:
        queued = sorted((m for m in completed if m.user_id == str(chat)), key=lambda m: m.id)
        assert texts[chat] == [m.text for m in queued]
        assert sorted(texts[chat]) == [f"You said: {chat}-{i}" for i in range(3)]
    assert_postroom_stopped(seen["room"])


# Telethon

PHONE = "+15550001"


class StandInClient:
    """What the example uses of Telethon's TelegramClient, answering as Telegram would with
    Telethon's real exception classes; MTProto has no practical stand-in server."""

    def __init__(self, blocked: int, unknown: int, flood_seconds: int) -> None:
        self.blocked, self.unknown, self.flood_seconds = blocked, unknown, flood_seconds
        self.handlers: list[tuple[Callable[[Any], Awaitable[None]], Any]] = []
        self.sent: list[tuple[int, str, float]] = []
        self.refused: list[int] = []
        self.floods: list[tuple[float, float]] = []
        self.violations: list[float] = []
        self.started_with: str | None = None
        self._until = 0.0
        self._disconnected = asyncio.Event()

    async def start(self, phone: str) -> None:
        self.started_with = phone

    def add_event_handler(self, callback: Callable[[Any], Awaitable[None]], event: Any) -> None:
        self.handlers.append((callback, event))

    async def send_message(self, entity: int, message: str) -> None:
        now = time.monotonic()
        if now < self._until - SLACK:
            self.violations.append(now)
            raise telethon.errors.FloodWaitError(request=None, capture=math.ceil(self._until - now))
        if self.flood_seconds:  # the first send meets FLOOD_WAIT
            seconds, self.flood_seconds = self.flood_seconds, 0
            self._until = now + seconds
            self.floods.append((now, self._until))
            raise telethon.errors.FloodWaitError(request=None, capture=seconds)
        if entity in (self.blocked, self.unknown):
            self.refused.append(entity)
            if entity == self.blocked:
                raise telethon.errors.UserIsBlockedError(request=None)
            raise telethon.errors.PeerIdInvalidError(request=None)
        self.sent.append((entity, message, now))

    async def run_until_disconnected(self) -> None:
        await self._disconnected.wait()

    async def disconnect(self) -> None:
        self._disconnected.set()


def test_telethon_client_floodwait_pauses_the_account(sqlite_url: str) -> None:
    """Incoming messages queue replies; FloodWaitError pauses the account (nothing sent until it
    ends, the attempt given back); a blocked user and an invalid peer fail for good; disconnecting
    stops postroom, which leaves every message final in the database."""

    async def scenario() -> StandInClient:
        client = StandInClient(BLOCKED, UNKNOWN, flood_seconds=1)
        no_pacing = SupervisorSettings()  # the example's user-account pacing would make this test slow
        running = asyncio.create_task(telethon_client.run(client, PHONE, sqlite_url, settings=no_pacing))
        try:
            (handler, event), = await until(lambda: client.handlers)
            assert isinstance(event, events.NewMessage)
            for i in range(3):
                for chat in (*GOOD_CHATS, BLOCKED, UNKNOWN):
                    await handler(SimpleNamespace(chat_id=chat, raw_text=f"{chat}-{i}"))
            # Then disconnect: the last outcome, if still in flight, is recorded by the stop.
            await until(lambda: len(client.sent) == 9 and len(client.refused) == 6)
        finally:
            await client.disconnect()
            await running
        return client

    client = asyncio.run(scenario())
    assert client.started_with == PHONE
    assert client.violations == []
    (flood_at, flood_until), = client.floods
    assert flood_until - SLACK <= min(at for _, _, at in client.sent if at > flood_at) < flood_until + 1.0
    for chat in GOOD_CHATS:
        texts = [text for to, text, _ in client.sent if to == chat]
        assert texts == [f"You said: {chat}-{i}" for i in range(3)]

    messages = asyncio.run(stored(sqlite_url, PHONE))
    assert len(messages) == 15
    for message in messages:
        failed = message.user_id in (str(BLOCKED), str(UNKNOWN))
        assert (message.status, message.attempts) == (Status.FAILED if failed else Status.COMPLETED, 1)
    assert {m.last_error for m in messages if m.status is Status.FAILED} == {
        "PermanentError: UserIsBlockedError: bot was blocked by the user",
        "PermanentError: PeerIdInvalidError: peer_id_invalid",
    }


def test_telethon_make_client_lets_flood_waits_through(tmp_path: Path) -> None:
    """The real TelegramClient is built with flood_sleep_threshold=0 (it would sleep otherwise)."""
    client = telethon_client.make_client(str(tmp_path / "session"), 12345, "0123456789abcdef")
    try:
        assert client.flood_sleep_threshold == 0
    finally:
        client.session.close()


# HTTP gateway

SENDER_A, SENDER_B = "+15550101", "+15550102"


def test_http_gateway_outcomes_follow_the_status_codes(
    gateway_server: GatewayServer, sqlite_url: str
) -> None:
    """429 + Retry-After pauses that sender number only (the other keeps sending); 400 fails at
    once; 503 is retried, and fails once attempts run out; 200 delivers once, in order."""
    gateway_server.script.update({
        "+1700": [429],  # then 200
        "+1400": [400],
        "+1503": [503],  # then 200
        "+1599": [503, 503],  # every attempt
    })
    fast = SupervisorSettings(account=AccountSettings(backoff=BackoffPolicy(base=0.05, jitter=0.0)))

    async def scenario() -> tuple[dict[str, Message], list[Message]]:
        async with http_gateway.gateway(sqlite_url, gateway_server.url, GATEWAY_TOKEN, settings=fast) as room:
            ids = {to: await room.enqueue(phone=SENDER_A, user_id=to, text=f"A to {to}", max_attempts=2)
                   for to in ("+1700", "+1400", "+1503", "+1599")}
            ids |= {f"{to}#{i}": await room.enqueue(phone=SENDER_A, user_id=to, text=f"A#{i}")
                    for to in ("+1801",) for i in range(3)}
            await until(lambda: any(d.status == 429 for d in gateway_server.snapshot()[0]))
            b_ids = [await room.enqueue(phone=SENDER_B, user_id="+1802", text=f"B#{i}") for i in range(3)]
            final = dict(zip(ids, await until_final(room, list(ids.values())), strict=True))
            return final, await until_final(room, b_ids)

    final, b_messages = asyncio.run(scenario())
    answered, violations = gateway_server.snapshot()
    assert violations == []
    assert pykka.ActorRegistry.get_all() == []  # the context manager stopped postroom
    outcome = {key: (m.status, m.attempts) for key, m in final.items()}
    assert outcome == {
        "+1700": (Status.COMPLETED, 1),  # the 429 attempt was given back
        "+1400": (Status.FAILED, 1),
        "+1503": (Status.COMPLETED, 2),
        "+1599": (Status.FAILED, 2),
        **{f"+1801#{i}": (Status.COMPLETED, 1) for i in range(3)},
    }
    assert final["+1400"].last_error == "PermanentError: HTTPStatusError: HTTP 400; not deliverable"
    assert [(m.status, m.attempts) for m in b_messages] == [(Status.COMPLETED, 1)] * 3
    accepted = gateway_server.accepted()
    assert accepted["+1801"] == ["A#0", "A#1", "A#2"]
    assert accepted["+1802"] == ["B#0", "B#1", "B#2"]
    assert "+1400" not in accepted
    flood = next(d for d in answered if d.status == 429)
    window = (flood.at, flood.at + gateway_server.retry_after)
    a_after = [d.at for d in answered if d.sender == SENDER_A and d.at > flood.at]
    assert min(a_after) >= window[1] - SLACK
    assert any(d.sender == SENDER_B and window[0] < d.at < window[1] for d in answered), "B waited for A"


def test_http_gateway_enqueues_from_another_process_beside_the_serving_bot(
        gateway_server: GatewayServer, tmp_path: Path) -> None:
    """`http_gateway.py serve` sends; `http_gateway.py FROM TO TEXT`, a producer in another
    process, enqueues beside it (no DatabaseLocked) and prints only the outcome; SIGTERM stops
    the bot gracefully."""
    env = {**os.environ, "GATEWAY_URL": gateway_server.url, "GATEWAY_TOKEN": GATEWAY_TOKEN,
           "POSTROOM_DATABASE": f"sqlite:///{tmp_path}/gateway.db"}
    bot = subprocess.Popen([sys.executable, "examples/http_gateway.py", "serve"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert bot.stdout is not None and bot.stdout.readline() == "serving\n"
        done = subprocess.run([sys.executable, "examples/http_gateway.py", SENDER_A, "+1900", "hello there"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False)
        assert (done.returncode, done.stdout) == (0, "completed\n"), done.stderr
        assert gateway_server.accepted() == {"+1900": ["hello there"]}
        bot.send_signal(signal.SIGTERM)
        assert bot.wait(timeout=30) == 0
    finally:
        bot.kill()
        bot.wait(timeout=30)
        if bot.stdout is not None:
            bot.stdout.close()


# The adapters' table, against the libraries' real classes

SEND = SendMessage(chat_id=1, text="x")


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (telegram.error.RetryAfter(3), RateLimited),
        (telegram.error.Forbidden("Forbidden: bot was blocked by the user"), PermanentError),
        (telegram.error.BadRequest("Bad Request: chat not found"), PermanentError),
        (telegram.error.ChatMigrated(-1001234), PermanentError),
        (telegram.error.TimedOut(), SendTimeout),
        (telegram.error.NetworkError("reset"), TransientError),
        (telegram.error.InvalidToken(), AccountSuspended),
        (aiogram_errors.TelegramRetryAfter(SEND, "flood", 3), RateLimited),
        (aiogram_errors.TelegramForbiddenError(SEND, "blocked"), PermanentError),
        (aiogram_errors.TelegramBadRequest(SEND, "chat not found"), PermanentError),
        (aiogram_errors.TelegramNotFound(SEND, "not found"), PermanentError),
        (aiogram_errors.TelegramMigrateToChat(SEND, "migrated", -1001234), PermanentError),
        (aiogram_errors.TelegramServerError(SEND, "bad gateway"), TransientError),
        (aiogram_errors.TelegramUnauthorizedError(SEND, "unauthorized"), AccountSuspended),
        (telethon.errors.FloodWaitError(request=None, capture=3), RateLimited),
        (telethon.errors.UserIsBlockedError(request=None), PermanentError),
        (telethon.errors.PeerIdInvalidError(request=None), PermanentError),
        (telethon.errors.PeerFloodError(request=None), AccountSuspended),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else "",
)
def test_real_library_errors_are_classified(error: BaseException, outcome: type[BaseException]) -> None:
    """The adapters' class-name table matches the real exception hierarchies."""
    classified = classify(error)
    assert type(classified) is outcome
    if isinstance(classified, RateLimited):
        assert classified.retry_after == 3.0
    assert "1234" not in str(classified)  # a migrated chat's new id stays out of the text
