"""Translate bot libraries' exceptions into postroom's sender outcomes, without importing them.

A sender can let python-telegram-bot, aiogram 3, Telethon, Pyrogram (and forks) or an
HTTP client's exception escape; `classify` reads it by class names along its MRO and by
attributes, so none of those libraries is a dependency. The outcome's message carries
only the library's class name and numbers: `str(error)` often holds the chat id or text.
`sender_with_adapters` wraps a plain or an `async def` sender alike.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any, ParamSpec, TypeVar, overload

from actors.aio import is_coroutine_sender
from actors.clock import SystemClock
from actors.errors import (
    AccountSuspended,
    PermanentError,
    RateLimited,
    SendError,
    SendTimeout,
    TransientError,
)

#: Seconds to pause when a rate limit does not say how long (no Retry-After, no attribute).
DEFAULT_RETRY_AFTER = 1.0
#: Seconds an account pauses after PEER_FLOOD (Telegram gives no duration; it usually lasts hours).
PEER_FLOOD_PAUSE = 6 * 3600.0

_SYSTEM_CLOCK = SystemClock()  # only its now() is used: no timer thread is started

P = ParamSpec("P")
R = TypeVar("R")


class Outcome(Enum):
    """What a matched exception becomes."""

    RATE_LIMITED = "rate_limited"  # RateLimited(retry_after from the rule's attribute)
    PERMANENT = "permanent"  # PermanentError: this message can never be delivered
    TRANSIENT = "transient"  # TransientError: retry with backoff
    UNKNOWN = "unknown"  # SendTimeout: transient, and the message may have gone out
    SUSPENDED = "suspended"  # AccountSuspended(reason, retry_after=pause)


@dataclass(frozen=True, slots=True)
class Rule:
    """One row: an exception of one of `names`, from the library rooted at `base`, becomes `outcome`."""

    base: str
    """The library's base class name; it must be in the MRO too, so a same-named class elsewhere
    (cryptography's InvalidToken, werkzeug's BadRequest) does not match."""
    names: tuple[str, ...]
    """Class names looked for along the MRO; the most derived match wins."""
    outcome: Outcome
    seconds: str | None = None
    """RATE_LIMITED: the attribute holding the wait (int, float or timedelta)."""
    reason: str = ""
    """SUSPENDED: why, in a few words; PERMANENT: what to say instead of "not deliverable"."""
    pause: float | None = None
    """SUSPENDED: seconds until the account may try again; None: until a user lifts it."""


_PTB, _AIOGRAM, _TELETHON, _PYROGRAM = "TelegramError", "TelegramAPIError", "RPCError", "RPCError"
_MOVED = "the chat moved to a new id (a group upgraded to a supergroup); send there instead"

#: The platforms' own reasons that name no person, kept in `last_error` when an error's text
#: holds one (Telegram's descriptions, lowercased); any other text is replaced.
SAFE_REASONS: tuple[str, ...] = (
    "bot was blocked by the user", "user is deactivated", "bot was kicked from the group chat",
    "bot was kicked from the supergroup chat", "bot was kicked from the channel chat",
    "bot can't initiate conversation with a user", "bot can't send messages to bots",
    "bot is not a member of the channel chat", "bot is not a member of the supergroup chat",
    "chat not found", "user not found", "message is too long", "message text is empty",
    "message to reply not found", "wrong file identifier", "can't parse entities",
    "not enough rights to send text messages to the chat", "have no rights to send a message",
    "group chat was upgraded to a supergroup chat", "the group chat was deleted", "peer_id_invalid",
    "need administrator rights in the channel chat", "chat_write_forbidden",
)
#: Reasons told by the class itself (Telethon, Pyrogram), in the words of `SAFE_REASONS`.
_CLASS_REASONS = {
    "UserIsBlockedError": "bot was blocked by the user", "UserIsBlocked": "bot was blocked by the user",
    "InputUserDeactivatedError": "user is deactivated", "InputUserDeactivated": "user is deactivated",
    "PeerIdInvalidError": "peer_id_invalid", "PeerIdInvalid": "peer_id_invalid",
    "ChatWriteForbiddenError": "chat_write_forbidden", "ChatWriteForbidden": "chat_write_forbidden",
}

RULES: tuple[Rule, ...] = (
    # python-telegram-bot (telegram.error); BadRequest and TimedOut subclass NetworkError.
    Rule(_PTB, ("RetryAfter",), Outcome.RATE_LIMITED, seconds="retry_after"),
    Rule(_PTB, ("Forbidden",), Outcome.PERMANENT),  # e.g. the user blocked the bot
    Rule(_PTB, ("BadRequest",), Outcome.PERMANENT),
    Rule(_PTB, ("TimedOut",), Outcome.UNKNOWN),
    Rule(_PTB, ("NetworkError",), Outcome.TRANSIENT),
    Rule(_PTB, ("InvalidToken",), Outcome.SUSPENDED, reason="invalid token"),
    # The group became a supergroup: this chat id is dead (the new one, in new_chat_id, is not logged).
    Rule(_PTB, ("ChatMigrated",), Outcome.PERMANENT, reason=_MOVED),
    # aiogram 3 (aiogram.exceptions); TelegramEntityTooLarge (413) subclasses TelegramNetworkError.
    Rule(_AIOGRAM, ("TelegramRetryAfter",), Outcome.RATE_LIMITED, seconds="retry_after"),
    Rule(
        _AIOGRAM,
        ("TelegramForbiddenError", "TelegramBadRequest", "TelegramNotFound", "TelegramEntityTooLarge"),
        Outcome.PERMANENT,
    ),
    # As PTB's ChatMigrated; the new id is in migrate_to_chat_id.
    Rule(_AIOGRAM, ("TelegramMigrateToChat",), Outcome.PERMANENT, reason=_MOVED),
    Rule(_AIOGRAM, ("TelegramNetworkError", "TelegramServerError"), Outcome.TRANSIENT),
    Rule(_AIOGRAM, ("TelegramUnauthorizedError",), Outcome.SUSPENDED, reason="unauthorized"),
    # Telethon (telethon.errors); PeerFloodError subclasses BadRequestError.
    Rule(_TELETHON, ("FloodWaitError", "SlowModeWaitError"), Outcome.RATE_LIMITED, seconds="seconds"),
    Rule(_TELETHON, ("PeerFloodError",), Outcome.SUSPENDED, reason="peer flood", pause=PEER_FLOOD_PAUSE),
    Rule(
        _TELETHON,
        ("UserIsBlockedError", "ChatWriteForbiddenError", "InputUserDeactivatedError", "PeerIdInvalidError"),
        Outcome.PERMANENT,
    ),
    Rule(_TELETHON, ("UserDeactivatedBanError", "UserDeactivatedError"), Outcome.SUSPENDED, reason="banned"),
    Rule(
        _TELETHON,
        ("AuthKeyUnregisteredError", "SessionRevokedError"),
        Outcome.SUSPENDED,
        reason="session revoked",
    ),
    # Pyrogram and forks (pyrogram.errors); PeerFlood subclasses BadRequest.
    Rule(_PYROGRAM, ("FloodWait", "SlowmodeWait"), Outcome.RATE_LIMITED, seconds="value"),
    Rule(_PYROGRAM, ("PeerFlood",), Outcome.SUSPENDED, reason="peer flood", pause=PEER_FLOOD_PAUSE),
    Rule(
        _PYROGRAM,
        ("UserIsBlocked", "InputUserDeactivated", "PeerIdInvalid", "ChatWriteForbidden"),
        Outcome.PERMANENT,
    ),
    Rule(_PYROGRAM, ("UserDeactivatedBan", "UserDeactivated"), Outcome.SUSPENDED, reason="banned"),
    Rule(_PYROGRAM, ("AuthKeyUnregistered", "SessionRevoked"), Outcome.SUSPENDED, reason="session revoked"),
)


def classify(
    error: BaseException,
    *,
    now: Callable[[], datetime] = _SYSTEM_CLOCK.now,
    rules: tuple[Rule, ...] = RULES,
) -> BaseException:
    """The postroom outcome for `error` (its `__cause__`), or `error` itself if none applies.

    `now` dates an HTTP-date Retry-After; `rules` replaces the table (e.g. another PEER_FLOOD_PAUSE).
    """
    if isinstance(error, SendError):
        return error  # already an outcome
    rule = _match(error, rules)
    outcome = _from_rule(error, rule) if rule else _from_http(error, now)
    if outcome is None:
        return error  # unknown: the account actor treats it as transient
    outcome.__cause__ = error  # as `raise outcome from error` would
    return outcome


@overload
def sender_with_adapters(
    sender: Callable[P, Coroutine[Any, Any, R]],
    *,
    now: Callable[[], datetime] = ...,
    rules: tuple[Rule, ...] = ...,
) -> Callable[P, Coroutine[Any, Any, R]]: ...


@overload
def sender_with_adapters(
    sender: Callable[P, R],
    *,
    now: Callable[[], datetime] = ...,
    rules: tuple[Rule, ...] = ...,
) -> Callable[P, R]: ...


def sender_with_adapters(
    sender: Callable[P, Any],
    *,
    now: Callable[[], datetime] = _SYSTEM_CLOCK.now,
    rules: tuple[Rule, ...] = RULES,
) -> Callable[P, Any]:
    """Wrap a sender so what it raises is re-raised classified, from the original.

    An `async def` sender gets an `async def` wrapper: postroom must still see a coroutine
    function to run it on the bot's loop, and the exception only appears when it is awaited.
    """
    if is_coroutine_sender(sender):

        @functools.wraps(sender)
        async def send_async(*args: P.args, **kwargs: P.kwargs) -> Any:
            try:
                return await sender(*args, **kwargs)
            except Exception as error:  # CancelledError (a send timeout) is a BaseException: not ours
                _reraise_classified(error, now, rules)
                raise

        return send_async

    @functools.wraps(sender)
    def send(*args: P.args, **kwargs: P.kwargs) -> Any:
        try:
            result = sender(*args, **kwargs)
        except Exception as error:  # KeyboardInterrupt and friends are never a send outcome
            _reraise_classified(error, now, rules)
            raise
        # A plain function around an `async def` (a lambda): what awaiting it raises is classified too.
        return _classified_awaitable(result, now, rules) if inspect.isawaitable(result) else result

    return send


async def _classified_awaitable(awaitable: Awaitable[Any], now: Callable[[], datetime],
                                rules: tuple[Rule, ...]) -> Any:
    try:
        return await awaitable
    except Exception as error:
        _reraise_classified(error, now, rules)
        raise


def _reraise_classified(error: Exception, now: Callable[[], datetime], rules: tuple[Rule, ...]) -> None:
    """Raise `error`'s outcome from it; return (so the caller re-raises) when it has none."""
    classified = classify(error, now=now, rules=rules)
    if classified is not error:
        raise classified from error


def _match(error: BaseException, rules: tuple[Rule, ...]) -> Rule | None:
    """The rule naming the most derived class of `error` whose library base is also in its MRO."""
    mro = [cls.__name__ for cls in type(error).__mro__]
    for name in mro:
        for rule in rules:
            if name in rule.names and rule.base in mro:
                return rule
    return None


def _from_rule(error: BaseException, rule: Rule) -> SendError:
    """Build the rule's outcome; the message names only the class and the numbers."""
    name = type(error).__name__
    if rule.outcome is Outcome.RATE_LIMITED:
        wait = _seconds(getattr(error, rule.seconds, None)) if rule.seconds else None
        return _rate_limited(name, DEFAULT_RETRY_AFTER if wait is None else wait)
    if rule.outcome is Outcome.SUSPENDED:
        until = "until lifted" if rule.pause is None else f"for {rule.pause:g} s"
        return AccountSuspended(rule.reason, rule.pause, f"{name}: account suspended ({rule.reason}) {until}")
    if rule.outcome is Outcome.UNKNOWN:
        return SendTimeout(f"{name}: timed out; the message may have been sent")
    if rule.outcome is Outcome.PERMANENT:
        return PermanentError(f"{name}: {rule.reason or _platform_reason(error) or 'not deliverable'}")
    return TransientError(f"{name}: temporary failure")


def _platform_reason(error: BaseException) -> str | None:
    """The platform's reason, if it is one of `SAFE_REASONS` (its words, never the error's text,
    which may quote a name); None otherwise."""
    known = _CLASS_REASONS.get(type(error).__name__)
    if known is not None:
        return known
    try:
        text = str(error).lower()
    except BaseException:  # noqa: BLE001 - an error's text is the sender's code: anything may raise
        return None
    return next((reason for reason in SAFE_REASONS if reason in text), None)


def _from_http(error: BaseException, now: Callable[[], datetime]) -> SendError | None:
    """Classify an HTTP client's error by status code; None when it carries no 4xx or 5xx."""
    status, headers, response = _http_parts(error)
    if status is None or status < 400:
        return None
    label = f"{type(error).__name__}: HTTP {status}"
    if status == 429:
        wait = _retry_after_header(_header(headers, "retry-after"), now)
        if wait is None:
            wait = _body_retry_after(response)
        return _rate_limited(label, DEFAULT_RETRY_AFTER if wait is None else wait)
    if status == 401:
        return AccountSuspended("unauthorized", None, f"{label}; account suspended until lifted")
    if status == 408 or status >= 500:
        return TransientError(f"{label}; temporary failure")
    return PermanentError(f"{label}; not deliverable")


def _http_parts(error: BaseException) -> tuple[int | None, object, object]:
    """Status, headers and response: httpx/requests keep them on `error.response`, aiohttp on `error`."""
    response = getattr(error, "response", None)
    status = _status(getattr(response, "status_code", None))
    if status is not None:
        return status, getattr(response, "headers", None), response
    return _status(getattr(error, "status", None)), getattr(error, "headers", None), None


def _rate_limited(label: str, wait: float) -> RateLimited:
    return RateLimited(wait, f"{label}: retry after {wait:g} s")


def _status(value: object) -> int | None:
    """An HTTP status code, or None for anything else (some exceptions' `status` is a word)."""
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    return None


def _seconds(value: object) -> float | None:
    """A finite, non-negative number of seconds from an int, float, numeric str or timedelta."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except (ValueError, OverflowError):
            return None
    else:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _header(headers: object, name: str) -> object:
    """A header's value, matched case-insensitively (a plain dict of headers is not)."""
    items = getattr(headers, "items", None)
    if not callable(items):
        return None
    return next((value for key, value in items() if isinstance(key, str) and key.lower() == name), None)


def _retry_after_header(value: object, now: Callable[[], datetime]) -> float | None:
    """Seconds from a Retry-After value: delay-seconds or an HTTP-date (RFC 9110)."""
    if not isinstance(value, str):
        return None
    seconds = _seconds(value.strip())
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)  # "-0000" parses as naive: it means UTC
    return max(0.0, (when - now()).total_seconds())


def _body_retry_after(response: object) -> float | None:
    """`parameters.retry_after` from a Telegram Bot API error body, if the response holds JSON."""
    read: Any = getattr(response, "json", None)
    if not callable(read):
        return None
    try:
        body = read()
    except (ValueError, RuntimeError):  # not JSON; httpx raises ResponseNotRead for an unread stream
        return None
    parameters = body.get("parameters") if isinstance(body, dict) else None
    return _seconds(parameters.get("retry_after")) if isinstance(parameters, dict) else None
