"""A stand-in Telegram Bot API server on 127.0.0.1, for driving the bot libraries for real.

It answers the methods the examples' libraries call (getMe, deleteWebhook, getUpdates,
sendMessage, close, logOut) at `/bot<token>/<method>`, and enforces Telegram's documented
limits (https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this):
one message per second per chat and about 30 per second per bot, answered with a 429
whose `parameters.retry_after` says how long to wait. A blocked chat gets 403, an unknown
one 400. Every accepted message is recorded with its arrival time, and so is every
request a bot makes while a retry_after given to it is still in force (a violation).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from aiohttp import web

#: A Bot API method: (token, parameters) -> response, called with the server's lock held.
Handler = Callable[[str, Mapping[str, str]], web.Response]
#: Seconds of timer and scheduling jitter forgiven at the end of a wait (a retry_after, the
#: per-chat interval): a request that early is the clock's granularity, not a client's fault.
SLACK = 0.02


@dataclass(frozen=True, slots=True)
class Sent:
    """A message the server accepted."""

    token: str
    chat_id: int
    text: str
    at: float
    """time.monotonic() on arrival."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A sendMessage the server answered with an error."""

    token: str
    chat_id: int
    status: int
    at: float
    until: float | None = None
    """For a 429: when the retry_after it gave ends (monotonic)."""


class BackgroundServer:
    """An aiohttp app on 127.0.0.1 and an ephemeral port, served by its own thread and loop.

    Its own loop, so PTB's `run_polling` (which owns the test thread's loop) can reach it too.
    """

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stand-in-server", daemon=True)
        self._runner = web.AppRunner(app, access_log=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]


async def request_params(request: web.Request) -> dict[str, str]:
    """Parameters from the query, a JSON body, or a form (urlencoded: PTB; multipart: aiogram)."""
    params = dict(request.query)
    if request.content_type == "application/json":
        params.update({k: str(v) for k, v in (await request.json()).items()})
    elif request.can_read_body:
        params.update({k: str(v) for k, v in (await request.post()).items()})
    return params


def ok(result: object) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)


class BotApiServer(BackgroundServer):
    """Telegram's Bot API for any number of bots, with its rate limits and a scriptable flood."""

    def __init__(self, chats: set[int], blocked: set[int], *, chat_interval: float = 1.0,
                 bot_rate: int = 30, long_poll_cap: float = 0.5) -> None:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._dispatch)
        super().__init__(app)
        self.chats, self.blocked = chats | blocked, blocked
        self.chat_interval, self.bot_rate, self.long_poll_cap = chat_interval, bot_rate, long_poll_cap
        self.sent: list[Sent] = []
        self.refused: list[Refused] = []
        self.violations: list[Refused] = []
        self.methods: list[tuple[str, str]] = []
        self._updates: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._next_update = 1
        self._floods: dict[str, int] = {}
        self._until: dict[str, float] = {}
        self._last_to: dict[tuple[str, int], float] = {}
        self._recent: dict[str, deque[float]] = defaultdict(deque)
        self._methods: dict[str, Handler] = {
            "getMe": self._get_me, "deleteWebhook": lambda t, p: ok(True),
            "close": lambda t, p: ok(True), "logOut": lambda t, p: ok(True),
            "sendMessage": self._send_message,
        }

    # What tests call (from any thread).

    def push(self, token: str, chat_id: int, text: str) -> None:
        """A user writes `text` to the bot in `chat_id`: an update for its next getUpdates."""
        with self.lock:
            update_id, self._next_update = self._next_update, self._next_update + 1
            self._updates[token].append({"update_id": update_id, "message": {
                "message_id": update_id, "date": int(time.time()), "text": text,
                "chat": {"id": chat_id, "type": "private", "first_name": "User"},
                "from": {"id": chat_id, "is_bot": False, "first_name": "User"},
            }})

    def flood(self, token: str, retry_after: int = 1) -> None:
        """The bot's next sendMessage gets a 429 (Telegram's flood control, for any reason)."""
        with self.lock:
            self._floods[token] = retry_after

    def texts(self, token: str | None = None) -> dict[int, list[str]]:
        """Accepted texts per chat, in arrival order."""
        with self.lock:
            by_chat: dict[int, list[str]] = defaultdict(list)
            for sent in self.sent:
                if token is None or sent.token == token:
                    by_chat[sent.chat_id].append(sent.text)
            return dict(by_chat)

    def snapshot(self) -> tuple[list[Sent], list[Refused], list[Refused]]:
        """Copies of (sent, refused, violations)."""
        with self.lock:
            return list(self.sent), list(self.refused), list(self.violations)

    # The server side.

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        token, method = request.match_info["token"], request.match_info["method"]
        params = await request_params(request)
        with self.lock:
            self.methods.append((token, method))
        if method == "getUpdates":
            return await self._get_updates(token, params)
        handler = self._methods.get(method)
        if handler is None:
            return error(404, "Not Found")
        with self.lock:
            response: web.Response = handler(token, params)
        return response

    def _get_me(self, token: str, params: Mapping[str, str]) -> web.Response:
        return ok({**bot_user(token), "can_join_groups": True, "can_read_all_group_messages": False,
                   "supports_inline_queries": False})

    async def _get_updates(self, token: str, params: Mapping[str, str]) -> web.Response:
        """Long polling, held at most `long_poll_cap` seconds so a stopping bot is not kept waiting."""
        offset = int(params.get("offset", 0))
        deadline = time.monotonic() + min(float(params.get("timeout", 0)), self.long_poll_cap)
        while True:
            with self.lock:
                # An offset confirms every update below it: Telegram forgets them.
                self._updates[token] = [u for u in self._updates[token] if u["update_id"] >= offset]
                pending = list(self._updates[token])
            if pending or time.monotonic() >= deadline:
                return ok(pending)
            await asyncio.sleep(0.01)

    def _send_message(self, token: str, params: Mapping[str, str]) -> web.Response:
        """Called with the lock held."""
        now, chat_id, text = time.monotonic(), int(params["chat_id"]), params.get("text", "")
        until = self._until.get(token, 0.0)
        if now < until - SLACK:
            self.violations.append(Refused(token, chat_id, 429, now, until))
            return self._too_many(token, chat_id, now, math.ceil(until - now))
        if token in self._floods:
            return self._too_many(token, chat_id, now, self._floods.pop(token))
        if chat_id not in self.chats:
            self.refused.append(Refused(token, chat_id, 400, now))
            return error(400, "Bad Request: chat not found")
        if chat_id in self.blocked:
            self.refused.append(Refused(token, chat_id, 403, now))
            return error(403, "Forbidden: bot was blocked by the user")
        last = self._last_to.get((token, chat_id))
        if last is not None and now - last < self.chat_interval - SLACK:
            return self._too_many(token, chat_id, now, math.ceil(self.chat_interval - (now - last)))
        recent = self._recent[token]
        while recent and now - recent[0] >= 1.0:
            recent.popleft()
        if len(recent) >= self.bot_rate:
            return self._too_many(token, chat_id, now, 1)
        recent.append(now)
        self._last_to[(token, chat_id)] = now
        self.sent.append(Sent(token, chat_id, text, now))
        return ok({"message_id": len(self.sent), "date": int(time.time()), "text": text,
                   "chat": {"id": chat_id, "type": "private", "first_name": "User"},
                   "from": bot_user(token)})

    def _too_many(self, token: str, chat_id: int, now: float, retry_after: int) -> web.Response:
        until = now + retry_after
        self._until[token] = max(self._until.get(token, 0.0), until)
        self.refused.append(Refused(token, chat_id, 429, now, until))
        return error(429, f"Too Many Requests: retry after {retry_after}", retry_after)


def bot_user(token: str) -> dict[str, Any]:
    """The bot's User object; a token is "<bot id>:<secret>"."""
    bot_id = int(token.split(":")[0])
    return {"id": bot_id, "is_bot": True, "first_name": "Stand-in", "username": f"standin{bot_id}_bot"}

