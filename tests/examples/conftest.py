"""Stand-in servers for the examples: a Telegram Bot API and an HTTP SMS gateway, on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.examples.botapi_server import BotApiServer
from tests.examples.gateway_server import GatewayServer

#: Chats the stand-in Bot API knows; BLOCKED blocked the bot; UNKNOWN was never seen.
GOOD_CHATS = (1001, 1002, 1003)
BLOCKED, UNKNOWN = 4031, 4041
GATEWAY_TOKEN = "gateway-secret"


@pytest.fixture
def botapi() -> Iterator[BotApiServer]:
    """A Bot API server enforcing Telegram's limits: 1 message/s per chat, 30/s per bot."""
    with BotApiServer(set(GOOD_CHATS), {BLOCKED}) as server:
        yield server


@pytest.fixture
def gateway_server() -> Iterator[GatewayServer]:
    """An SMS gateway whose answers each test scripts through `server.script`."""
    with GatewayServer(GATEWAY_TOKEN, {}) as server:
        yield server
