"""Bot libraries' exceptions become postroom outcomes, as tables of stand-in classes.

The stand-ins copy the real class names and hierarchies (not the libraries), grouped per
library so same-named classes (PTB's and Pyrogram's BadRequest) can coexist.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from actors.adapters import DEFAULT_RETRY_AFTER, PEER_FLOOD_PAUSE, RULES, classify, sender_with_adapters
from actors.errors import (
    AccountSuspended,
    PermanentError,
    RateLimited,
    SendTimeout,
    TransientError,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
#: What senders' exception texts tend to hold; it must never reach a classified outcome.
CANARY = "chat_id=987654321 text='meet me at 5'"
#: The new id of a migrated chat: a chat id, so it must not reach the outcome's text either.
MOVED_TO = -1001234567890


def fixed_now() -> datetime:
    return NOW


class PTB:
    """python-telegram-bot's telegram.error."""

    class TelegramError(Exception):
        def __init__(self, message: str = CANARY) -> None:
            super().__init__(message)

    class NetworkError(TelegramError): ...

    class BadRequest(NetworkError): ...

    class TimedOut(NetworkError): ...

    class Forbidden(TelegramError): ...

    class InvalidToken(TelegramError): ...

    class Conflict(TelegramError): ...

    class ChatMigrated(TelegramError):
        def __init__(self, new_chat_id: int) -> None:
            super().__init__(f"Group migrated to supergroup. New chat id: {new_chat_id}")
            self.new_chat_id = new_chat_id

    class RetryAfter(TelegramError):
        def __init__(self, retry_after: int | timedelta) -> None:
            super().__init__(f"Flood control exceeded in {CANARY}")
            self.retry_after = retry_after


class Aiogram:
    """aiogram 3's aiogram.exceptions."""

    class AiogramError(Exception): ...

    class DetailedAiogramError(AiogramError):
        def __init__(self, message: str = CANARY) -> None:
            super().__init__(message)

    class TelegramAPIError(DetailedAiogramError): ...

    class TelegramNetworkError(TelegramAPIError): ...

    class TelegramEntityTooLarge(TelegramNetworkError): ...

    class TelegramBadRequest(TelegramAPIError): ...

    class TelegramForbiddenError(TelegramAPIError): ...

    class TelegramNotFound(TelegramAPIError): ...

    class TelegramMigrateToChat(TelegramAPIError):
        def __init__(self, migrate_to_chat_id: int) -> None:
            super().__init__(f"The group has been migrated to a supergroup with id {migrate_to_chat_id}")
            self.migrate_to_chat_id = migrate_to_chat_id

    class TelegramUnauthorizedError(TelegramAPIError): ...

    class TelegramServerError(TelegramAPIError): ...

    class RestartingTelegram(TelegramServerError): ...

    class TelegramRetryAfter(TelegramAPIError):
        def __init__(self, retry_after: int) -> None:
            super().__init__(f"Flood control exceeded in {CANARY}")
            self.retry_after = retry_after


class Telethon:
    """Telethon's telethon.errors."""

    class RPCError(Exception):
        def __init__(self, message: str = CANARY) -> None:
            super().__init__(message)

    class BadRequestError(RPCError): ...

    class UnauthorizedError(RPCError): ...

    class ForbiddenError(RPCError): ...

    class FloodError(RPCError): ...

    class FloodWaitError(FloodError):
        def __init__(self, seconds: int) -> None:
            super().__init__(f"A wait of {seconds} seconds is required in {CANARY}")
            self.seconds = seconds

    class SlowModeWaitError(FloodError):
        def __init__(self, seconds: int) -> None:
            super().__init__(CANARY)
            self.seconds = seconds

    class PeerFloodError(BadRequestError): ...

    class UserIsBlockedError(BadRequestError): ...

    class InputUserDeactivatedError(BadRequestError): ...

    class PeerIdInvalidError(BadRequestError): ...

    class ChatWriteForbiddenError(ForbiddenError): ...

    class UserDeactivatedError(UnauthorizedError): ...

    class UserDeactivatedBanError(UnauthorizedError): ...

    class AuthKeyUnregisteredError(UnauthorizedError): ...

    class SessionRevokedError(UnauthorizedError): ...


class Pyrogram:
    """Pyrogram's pyrogram.errors (and its forks')."""

    class RPCError(Exception):
        def __init__(self, value: int | str = CANARY) -> None:
            super().__init__(f"Telegram says: {CANARY}")
            self.value = value

    class BadRequest(RPCError): ...

    class Forbidden(RPCError): ...

    class Unauthorized(RPCError): ...

    class Flood(RPCError): ...

    class FloodWait(Flood): ...

    class SlowmodeWait(Flood): ...

    class PeerFlood(BadRequest): ...

    class UserIsBlocked(BadRequest): ...

    class InputUserDeactivated(BadRequest): ...

    class PeerIdInvalid(BadRequest): ...

    class ChatWriteForbidden(Forbidden): ...

    class UserDeactivated(Unauthorized): ...

    class UserDeactivatedBan(Unauthorized): ...

    class AuthKeyUnregistered(Unauthorized): ...

    class SessionRevoked(Unauthorized): ...


class Response:
    """An httpx / requests response: status_code, headers, json()."""

    def __init__(self, status_code: int, headers: dict[str, str] | None = None, body: Any = None) -> None:
        self.status_code = status_code
        self.headers = headers or {}
        self.body = body

    def json(self) -> Any:
        if self.body is None:
            raise ValueError("not JSON")
        return self.body


class HTTPStatusError(Exception):
    """httpx's: the response hangs off the exception."""

    def __init__(self, response: Response | None) -> None:
        super().__init__(f"Client error for url https://api.example/send?{CANARY}")
        self.response = response


class ClientResponseError(Exception):
    """aiohttp's: status and headers on the exception itself."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(CANARY)
        self.status = status
        self.headers = headers


class InvalidToken(Exception):
    """cryptography.fernet's: same name as PTB's, no TelegramError above it."""


def http(status: int, headers: dict[str, str] | None = None, body: Any = None) -> HTTPStatusError:
    return HTTPStatusError(Response(status, headers, body))


#: An outcome's type, retry_after and reason (None where it has none).
Expected = tuple[type[BaseException], float | None, str | None]

#: (library exception, what it must become).
CASES: list[tuple[BaseException, Expected]] = [
    # python-telegram-bot
    (PTB.RetryAfter(5), (RateLimited, 5.0, None)),  # flood control, int seconds
    (PTB.RetryAfter(timedelta(minutes=2)), (RateLimited, 120.0, None)),  # v22 gives a timedelta
    (PTB.Forbidden(), (PermanentError, None, None)),  # bot blocked by the user
    (PTB.BadRequest(), (PermanentError, None, None)),  # a NetworkError subclass, yet permanent
    (PTB.TimedOut(), (SendTimeout, None, None)),  # may have been sent: transient, outcome unknown
    (PTB.NetworkError(), (TransientError, None, None)),  # connection trouble
    (PTB.InvalidToken(), (AccountSuspended, None, "invalid token")),  # the bot token is dead
    (PTB.ChatMigrated(MOVED_TO), (PermanentError, None, None)),  # the group became a supergroup
    # aiogram 3
    (Aiogram.TelegramRetryAfter(7), (RateLimited, 7.0, None)),  # flood control
    (Aiogram.TelegramForbiddenError(), (PermanentError, None, None)),  # bot blocked by the user
    (Aiogram.TelegramBadRequest(), (PermanentError, None, None)),  # chat not found, bad text
    (Aiogram.TelegramNotFound(), (PermanentError, None, None)),  # 404
    (Aiogram.TelegramMigrateToChat(MOVED_TO), (PermanentError, None, None)),  # became a supergroup
    (Aiogram.TelegramEntityTooLarge(), (PermanentError, None, None)),  # 413, though a network error
    (Aiogram.TelegramNetworkError(), (TransientError, None, None)),  # connection trouble
    (Aiogram.TelegramServerError(), (TransientError, None, None)),  # 5xx
    (Aiogram.RestartingTelegram(), (TransientError, None, None)),  # a server error subclass
    (Aiogram.TelegramUnauthorizedError(), (AccountSuspended, None, "unauthorized")),  # 401
    # Telethon
    (Telethon.FloodWaitError(30), (RateLimited, 30.0, None)),  # FLOOD_WAIT_30
    (Telethon.SlowModeWaitError(10), (RateLimited, 10.0, None)),  # the group's slow mode
    (Telethon.PeerFloodError(), (AccountSuspended, PEER_FLOOD_PAUSE, "peer flood")),  # before BadRequest
    (Telethon.UserIsBlockedError(), (PermanentError, None, None)),  # the user blocked us
    (Telethon.ChatWriteForbiddenError(), (PermanentError, None, None)),  # no right to write there
    (Telethon.InputUserDeactivatedError(), (PermanentError, None, None)),  # recipient deleted
    (Telethon.PeerIdInvalidError(), (PermanentError, None, None)),  # unknown recipient
    (Telethon.UserDeactivatedBanError(), (AccountSuspended, None, "banned")),  # our account banned
    (Telethon.UserDeactivatedError(), (AccountSuspended, None, "banned")),  # our account deleted
    (Telethon.AuthKeyUnregisteredError(), (AccountSuspended, None, "session revoked")),  # logged out
    (Telethon.SessionRevokedError(), (AccountSuspended, None, "session revoked")),  # terminated
    # Pyrogram
    (Pyrogram.FloodWait(40), (RateLimited, 40.0, None)),  # FLOOD_WAIT_X: the seconds in .value
    (Pyrogram.SlowmodeWait(15), (RateLimited, 15.0, None)),  # the group's slow mode
    (Pyrogram.PeerFlood(), (AccountSuspended, PEER_FLOOD_PAUSE, "peer flood")),  # a BadRequest subclass
    (Pyrogram.UserIsBlocked(), (PermanentError, None, None)),  # the user blocked us
    (Pyrogram.InputUserDeactivated(), (PermanentError, None, None)),  # recipient deleted
    (Pyrogram.PeerIdInvalid(), (PermanentError, None, None)),  # unknown recipient
    (Pyrogram.ChatWriteForbidden(), (PermanentError, None, None)),  # no right to write there
    (Pyrogram.UserDeactivatedBan(), (AccountSuspended, None, "banned")),  # our account banned
    (Pyrogram.UserDeactivated(), (AccountSuspended, None, "banned")),  # our account deleted
    (Pyrogram.AuthKeyUnregistered(), (AccountSuspended, None, "session revoked")),  # logged out
    (Pyrogram.SessionRevoked(), (AccountSuspended, None, "session revoked")),  # terminated
    # HTTP clients
    (http(429, {"Retry-After": "12"}), (RateLimited, 12.0, None)),  # delay-seconds
    (http(429, {"Retry-After": "Tue, 01 Jan 2030 00:02:00 GMT"}), (RateLimited, 120.0, None)),  # a date
    (http(429, {"retry-after": "3"}), (RateLimited, 3.0, None)),  # header names are case-insensitive
    (http(429, {"Retry-After": "Mon, 31 Dec 2029 23:00:00 GMT"}), (RateLimited, 0.0, None)),  # past: now
    (http(429), (RateLimited, DEFAULT_RETRY_AFTER, None)),  # no Retry-After: the default
    (http(429, {"Retry-After": "soon"}), (RateLimited, DEFAULT_RETRY_AFTER, None)),  # unreadable
    (
        http(429, body={"ok": False, "error_code": 429, "parameters": {"retry_after": 5}}),
        (RateLimited, 5.0, None),
    ),  # a Bot API body without the header
    (http(401), (AccountSuspended, None, "unauthorized")),  # credentials rejected
    (http(400), (PermanentError, None, None)),  # bad request
    (http(403), (PermanentError, None, None)),  # forbidden
    (http(404), (PermanentError, None, None)),  # no such chat
    (http(422), (PermanentError, None, None)),  # any other 4xx
    (http(408), (TransientError, None, None)),  # request timeout: try again
    (http(500), (TransientError, None, None)),  # server error
    (http(503), (TransientError, None, None)),  # unavailable
    (ClientResponseError(429, {"Retry-After": "8"}), (RateLimited, 8.0, None)),  # aiohttp shape
    (ClientResponseError(429), (RateLimited, DEFAULT_RETRY_AFTER, None)),  # aiohttp: headers None
    (ClientResponseError(403), (PermanentError, None, None)),  # aiohttp shape
    (ClientResponseError(502), (TransientError, None, None)),  # aiohttp shape
    # odd values
    (PTB.RetryAfter(-3), (RateLimited, 0.0, None)),  # negative: no wait
    (Pyrogram.FloodWait("nan"), (RateLimited, DEFAULT_RETRY_AFTER, None)),  # not a number: the default
]

#: Exceptions that must come back as they are (the account actor treats them as transient).
UNCHANGED: list[BaseException] = [
    ValueError(CANARY),  # an ordinary bug
    TimeoutError(CANARY),  # unknown to the table
    InvalidToken(CANARY),  # PTB's name, another library: no TelegramError in its MRO
    PTB.Conflict(),  # a PTB error without a rule
    Pyrogram.BadRequest(),  # a generic RPC error without a rule
    HTTPStatusError(None),  # requests: HTTPError without a response
    http(302),  # a redirect: not an error we classify
    ClientResponseError(True),  # type: ignore[arg-type]  # a bool is not a status code
    KeyboardInterrupt(),  # not a send outcome
    RateLimited(9),  # already an outcome
    PermanentError("x"),  # already an outcome
    AccountSuspended("banned"),  # already an outcome
]


def summary(error: BaseException) -> Expected:
    return type(error), getattr(error, "retry_after", None), getattr(error, "reason", None)


@pytest.mark.parametrize(("error", "expected"), CASES)
def test_classify(error: BaseException, expected: Expected) -> None:
    """Each library exception becomes the right outcome with the right numbers."""
    assert summary(classify(error, now=fixed_now)) == expected


def test_every_rule_name_has_a_case() -> None:
    """The table above covers every class name of RULES."""
    covered = {type(error).__name__ for error, _ in CASES}
    assert {name for rule in RULES for name in rule.names} <= covered


def test_no_name_in_two_rules() -> None:
    """Within one library a class name has one rule, so the table's order never matters."""
    keys = [(rule.base, name) for rule in RULES for name in rule.names]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("error", UNCHANGED)
def test_unknown_and_own_outcomes_are_returned_unchanged(error: BaseException) -> None:
    """What no rule covers, and postroom's own outcomes, come back as the same object."""
    assert classify(error, now=fixed_now) is error


@pytest.mark.parametrize(("error", "expected"), CASES)
def test_classified_chains_the_original(error: BaseException, expected: object) -> None:
    """The outcome's __cause__ is the library's exception, as after `raise ... from`."""
    classified = classify(error, now=fixed_now)
    assert classified.__cause__ is error
    assert classified.__suppress_context__


@pytest.mark.parametrize(("error", "expected"), CASES)
def test_outcome_message_is_redacted(error: BaseException, expected: object) -> None:
    """The outcome's text names the class and numbers, never the original's text."""
    text = str(classify(error, now=fixed_now))
    assert CANARY not in text
    assert type(error).__name__ in text


def test_message_carries_the_numbers() -> None:
    """Rate limits and HTTP statuses keep their numbers in the text."""
    assert str(classify(Telethon.FloodWaitError(30))) == "FloodWaitError: retry after 30 s"
    assert str(classify(http(404))) == "HTTPStatusError: HTTP 404; not deliverable"


@pytest.mark.parametrize("error", [PTB.ChatMigrated(MOVED_TO), Aiogram.TelegramMigrateToChat(MOVED_TO)])
def test_migrated_chat_says_it_moved_without_the_new_id(error: BaseException) -> None:
    """A migrated chat fails for good with a text that says why, and names no chat id."""
    text = str(classify(error))
    assert "chat moved" in text
    assert str(MOVED_TO) not in text
    assert str(abs(MOVED_TO)) not in text


def test_header_wins_over_body() -> None:
    """With both a Retry-After header and a Bot API body, the header decides."""
    error = http(429, {"Retry-After": "2"}, {"ok": False, "parameters": {"retry_after": 50}})
    assert summary(classify(error)) == (RateLimited, 2.0, None)


def test_peer_flood_pause_is_configurable() -> None:
    """A table with another pause, passed as `rules`, replaces the default one."""
    rules = tuple(dataclasses.replace(r, pause=60.0) if r.reason == "peer flood" else r for r in RULES)
    assert summary(classify(Telethon.PeerFloodError(), rules=rules)) == (AccountSuspended, 60.0, "peer flood")


def test_sender_with_adapters_raises_the_outcome_from_the_original() -> None:
    """A library exception leaves the wrapped sender classified, chained to the original."""
    original = Pyrogram.FloodWait(40)

    def sender(message: str) -> None:
        raise original

    with pytest.raises(RateLimited) as caught:
        sender_with_adapters(sender)("hello")
    assert caught.value.retry_after == 40.0
    assert caught.value.__cause__ is original


@pytest.mark.parametrize("error", [ValueError(CANARY), PermanentError("x")])
def test_sender_with_adapters_reraises_the_rest_unchanged(error: Exception) -> None:
    """Unknown exceptions and postroom's own outcomes pass through as the same object."""

    def sender(message: str) -> None:
        raise error

    with pytest.raises(type(error)) as caught:
        sender_with_adapters(sender)("hello")
    assert caught.value is error


def test_sender_with_adapters_passes_calls_and_results_through() -> None:
    """A send that succeeds returns the sender's result, called with the same arguments."""

    def deliver(message: str, *, prefix: str = "") -> str:
        """Deliver it."""
        return prefix + message

    wrapped = sender_with_adapters(deliver)
    assert wrapped("hi", prefix="> ") == "> hi"
    assert wrapped.__name__ == "deliver"


def test_sender_with_adapters_uses_the_injected_now() -> None:
    """An HTTP-date Retry-After is counted from the `now` given to the wrapper."""

    def sender(message: str) -> None:
        raise http(429, {"Retry-After": "Tue, 01 Jan 2030 00:00:30 GMT"})

    with pytest.raises(RateLimited) as caught:
        sender_with_adapters(sender, now=fixed_now)("hello")
    assert caught.value.retry_after == 30.0


def test_sender_with_adapters_keeps_an_async_sender_async() -> None:
    """An `async def` sender is wrapped by an `async def`: postroom awaits it on the bot's loop."""

    async def send(message: str) -> str:
        return message

    wrapped = sender_with_adapters(send)
    assert inspect.iscoroutinefunction(wrapped)
    assert asyncio.run(wrapped("hi")) == "hi"


def test_sender_with_adapters_classifies_what_an_async_sender_raises() -> None:
    """The awaited exception is classified, chained to the original."""
    original = Aiogram.TelegramRetryAfter(7)

    async def send(message: str) -> None:
        raise original

    with pytest.raises(RateLimited) as caught:
        asyncio.run(sender_with_adapters(send)("hi"))
    assert caught.value.retry_after == 7.0
    assert caught.value.__cause__ is original


def test_sender_with_adapters_wraps_an_async_callable_object() -> None:
    """An object whose `__call__` is `async def` is awaited too, not returned as a coroutine."""

    class Send:
        async def __call__(self, message: str) -> None:
            raise Telethon.UserIsBlockedError()

    wrapped = sender_with_adapters(Send())
    assert inspect.iscoroutinefunction(wrapped)
    with pytest.raises(PermanentError):
        asyncio.run(wrapped("hi"))


def test_sender_with_adapters_lets_cancellation_through() -> None:
    """A cancelled async send (postroom's send timeout) stays a cancellation."""

    async def main() -> None:
        started = asyncio.Event()

        async def send(message: str) -> None:
            started.set()
            await asyncio.sleep(3600)

        task = asyncio.ensure_future(sender_with_adapters(send)("hi"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


@pytest.mark.parametrize(("error", "text"), [
    # Telegram's own words, which name no person, are kept.
    (PTB.Forbidden("Forbidden: bot was blocked by the user"), "Forbidden: bot was blocked by the user"),
    (PTB.BadRequest("Bad Request: chat not found"), "BadRequest: chat not found"),
    (Aiogram.TelegramForbiddenError("Telegram server says - Forbidden: user is deactivated"),
     "TelegramForbiddenError: user is deactivated"),
    # The class says it (Telethon, Pyrogram): its words, never the error's text.
    (Telethon.ChatWriteForbiddenError(), "ChatWriteForbiddenError: chat_write_forbidden"),
    # Anything else is replaced: it may quote a name, a chat id, the text.
    (PTB.Forbidden(CANARY), "Forbidden: not deliverable"),
    (PTB.Forbidden("Forbidden: Ann Smith (+15550001) does not want your messages"),
     "Forbidden: not deliverable"),
])
def test_the_platforms_reason_survives_where_it_names_no_person(error: Exception, text: str) -> None:
    """A permanent failure keeps the platform's reason when it is one of SAFE_REASONS."""
    outcome = classify(error, now=fixed_now)
    assert isinstance(outcome, PermanentError) and str(outcome) == text


def test_an_error_whose_text_raises_is_not_deliverable() -> None:
    """Reading the error's text to find the reason must not fail the classification."""

    class Unreadable(PTB.Forbidden):
        def __str__(self) -> str:
            raise KeyboardInterrupt

    assert str(classify(Unreadable(), now=fixed_now)) == "Unreadable: not deliverable"
