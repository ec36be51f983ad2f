"""Checks at the door: a bad command is refused with `ValidationError` before any write."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from actors.messages import BatchKind, Broadcast, Enqueue, EnqueueBatch, Insert
from postroom_common import NewBroadcast, NewMessage, Priority, ValidationError
from postroom_common.checks import check_count

#: The most attempts a message may have: what an INTEGER column holds on PostgreSQL.
MAX_ATTEMPTS = 2**31 - 1

_CONTROL = re.compile("[\x00-\x1f\x7f]")  # a broadcast checks 100,000 ids: scanned in C, not char by char
#: Unicode categories refused in identifiers beyond ASCII: controls (C1) and format characters.
_INVISIBLE = frozenset({"Cc", "Cf"})


@dataclass(frozen=True, slots=True)
class Limits:
    """What the supervisor accepts."""

    max_text_length: int = 4096
    """Characters; Telegram's own limit for a text message."""
    default_max_attempts: int = 5
    """For an `Enqueue` that does not say."""
    max_field_length: int = 255
    """For user_id and idempotency_key (their columns hold 255)."""
    max_phone_length: int = 64
    """For phone (its column holds 64: PostgreSQL refuses longer, so the door must too)."""

    def __post_init__(self) -> None:
        check_count("Limits.max_text_length", self.max_text_length, minimum=1)
        check_count("Limits.default_max_attempts", self.default_max_attempts, minimum=1, maximum=MAX_ATTEMPTS)
        check_count("Limits.max_field_length", self.max_field_length, minimum=1, maximum=255)
        check_count("Limits.max_phone_length", self.max_phone_length, minimum=1, maximum=64)


def validate_insert(command: Enqueue | EnqueueBatch | Broadcast, now: datetime, limits: Limits) -> Insert:
    """The door's check of an enqueue command, the same for a supervisor and a producer: the
    `Insert` that writes it; `ValidationError` (nothing written) for anything else."""
    match command:
        case Enqueue():
            return Insert([validate_enqueue(command, now, limits)], BatchKind.ONE)
        case EnqueueBatch(commands):
            return Insert(validate_enqueues(commands, now, limits), BatchKind.BATCH)
        case Broadcast():
            return Insert(validate_broadcast(command, now, limits), BatchKind.BROADCAST)
    raise ValidationError(f"not an enqueue command: {type(command).__name__}")


def validate_enqueue(command: Enqueue, now: datetime, limits: Limits) -> NewMessage:
    """The `NewMessage` to write, or `ValidationError` saying what is wrong."""
    return _validate(command, now, limits, set())


def validate_enqueues(commands: Sequence[Enqueue], now: datetime, limits: Limits) -> list[NewMessage]:
    """`validate_enqueue` for each command, all or nothing; an error names the message's
    position (`message 7: ...`).

    A broadcast repeats its accounts, and often its recipients and text: each distinct
    value is checked once per batch.
    """
    if isinstance(commands, str | bytes) or not isinstance(commands, Sequence):
        raise ValidationError(f"EnqueueBatch takes a sequence of Enqueue, not {type(commands).__name__}")
    checked: set[tuple[str, str]] = set()
    news: list[NewMessage] = []
    for position, command in enumerate(commands):
        try:
            news.append(_validate(command, now, limits, checked))
        except ValidationError as error:
            raise ValidationError(f"message {position}: {error}") from None
    return news


def validate_broadcast(command: Broadcast, now: datetime, limits: Limits) -> NewBroadcast:
    """A `Broadcast`'s messages, all or nothing; the shared fields are checked once."""
    if not isinstance(command, Broadcast):
        raise ValidationError(f"expected Broadcast, got {type(command).__name__}")
    recipients = command.recipients
    if isinstance(recipients, str | bytes) or not isinstance(recipients, Sequence):
        raise ValidationError("recipients must be a sequence of (phone, user_id) pairs")
    checked: set[tuple[str, str]] = set()
    key = command.idempotency_key
    if key is not None:  # room for ":<position>" within the column
        _identifier("idempotency_key", key, limits.max_field_length - 12, checked)
    scheduled_at, max_attempts = _body(command, limits, checked)
    pairs: list[tuple[str, str]] = []  # a copy: the caller may reuse its list once told
    for position, pair in enumerate(recipients):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValidationError(f"recipient {position} must be a (phone, user_id) pair")
        phone, user_id = pair
        try:
            _identifier("phone", phone, limits.max_phone_length, checked)
            user_id = _recipient(user_id, limits, checked)
        except ValidationError as error:
            raise ValidationError(f"recipient {position}: {error}") from None
        pairs.append((phone, user_id))
    template = NewMessage(
        phone="", user_id="", text=command.text, attachment=command.attachment,
        priority=command.priority, created_at=now, scheduled_at=scheduled_at,
        max_attempts=max_attempts, idempotency_key=key,
    )
    return NewBroadcast(template, pairs)


def _validate(command: Enqueue, now: datetime, limits: Limits, checked: set[tuple[str, str]]) -> NewMessage:
    if not isinstance(command, Enqueue):
        raise ValidationError(f"expected Enqueue, got {type(command).__name__}")
    _identifier("phone", command.phone, limits.max_phone_length, checked)
    user_id = _recipient(command.user_id, limits, checked)
    if command.idempotency_key is not None:
        _identifier("idempotency_key", command.idempotency_key, limits.max_field_length, checked)
    scheduled_at, max_attempts = _body(command, limits, checked)
    return NewMessage(
        phone=command.phone, user_id=user_id, text=command.text,
        attachment=command.attachment, priority=command.priority, created_at=now,
        scheduled_at=scheduled_at, max_attempts=max_attempts,
        idempotency_key=command.idempotency_key,
    )


def _body(command: Enqueue | Broadcast, limits: Limits,
          checked: set[tuple[str, str]]) -> tuple[datetime | None, int]:
    """Check what is sent and how; the schedule in UTC and the attempts allowed."""
    _text(command.text, command.attachment, limits, checked)
    if command.attachment is not None:
        _identifier("attachment", command.attachment, 4096, checked)
    if not isinstance(command.priority, Priority):
        raise ValidationError(f"priority must be a Priority, not {command.priority!r}")
    max_attempts = _max_attempts(command.max_attempts, limits)
    return _utc("scheduled_at", command.scheduled_at), max_attempts


def _recipient(value: object, limits: Limits, checked: set[tuple[str, str]]) -> str:
    """A user_id as stored: a string, or an int (Telegram's chat ids) as its decimal text."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > 4 * limits.max_field_length:  # str() of a huge int raises
            raise ValidationError(f"user_id is longer than {limits.max_field_length}")
        value = str(value)
    if not isinstance(value, str):
        raise ValidationError("user_id must be a non-empty string or an int")
    _identifier("user_id", value, limits.max_field_length, checked)
    return value


def _identifier(name: str, value: object, max_length: int, checked: set[tuple[str, str]]) -> None:
    if not isinstance(value, str) or not value or value.isspace():
        raise ValidationError(f"{name} must be a non-empty string")
    if (name, value) in checked:
        return
    if len(value) > max_length:
        raise ValidationError(f"{name} is longer than {max_length}")
    if _CONTROL.search(value):
        raise ValidationError(f"{name} must not contain control characters")
    if not value.isascii():  # ASCII always encodes and has no other controls: a broadcast's ids skip both
        _encodable(name, value)
        _visible(name, value)
    checked.add((name, value))


def _text(text: object, attachment: object, limits: Limits, checked: set[tuple[str, str]]) -> None:
    if not isinstance(text, str):
        raise ValidationError("text must be a string")
    if not text and attachment is None:
        raise ValidationError("a message needs a text or an attachment")
    if len(text) > limits.max_text_length:
        raise ValidationError(f"text is longer than {limits.max_text_length} characters")
    if text.isascii() or ("text", text) in checked:
        return  # ASCII always encodes; a long non-ASCII broadcast text is encoded once
    _encodable("text", text)
    checked.add(("text", text))


def _visible(name: str, value: str) -> None:
    """No C1 control and no format character (category Cf: the bidi controls U+200E/F,
    U+202A-E, U+2066-9 that make `+1555` display as another number, zero-width ones)."""
    for char in value:
        if unicodedata.category(char) in _INVISIBLE:
            raise ValidationError(f"{name} must not contain control or format characters "
                                  f"(U+{ord(char):04X})")


def _encodable(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(f"{name} is not valid Unicode (lone surrogate at {exc.start})") from None


def _max_attempts(value: object, limits: Limits) -> int:
    if value is None:
        return limits.default_max_attempts
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ATTEMPTS:
        raise ValidationError(f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS}")
    return value


def _utc(name: str, value: object) -> datetime | None:
    """An aware datetime in UTC (None stays None)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ValidationError(f"{name} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{name} must be timezone-aware")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # the ends of year 1 and 9999 away from UTC have no UTC datetime
        raise ValidationError(f"{name} is out of range") from None
