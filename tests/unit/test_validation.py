"""Validation at the door: each bad input has its own clear, typed error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from actors.messages import Broadcast, Enqueue
from actors.validation import Limits, validate_broadcast, validate_enqueue, validate_enqueues
from postroom_common import Priority, ValidationError

NOW = datetime(2030, 1, 1, tzinfo=UTC)
GOOD = {"phone": "+15550001", "user_id": "42", "text": "hi"}


def command(**changes: Any) -> Enqueue:
    return Enqueue(**{**GOOD, **changes})


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"phone": ""}, "phone"),  # empty phone
        ({"phone": "   "}, "phone"),  # blank phone
        ({"phone": None}, "phone"),  # not a string
        ({"phone": "+1\x00555"}, "control"),  # NUL inside an identifier
        ({"user_id": ""}, "user_id"),  # empty recipient
        ({"user_id": 42.0}, "user_id"),  # a float is no chat id
        ({"user_id": True}, "user_id"),  # nor is a bool
        ({"user_id": None}, "user_id"),
        ({"user_id": 10**300}, "user_id is longer than 255"),  # an int too long as text
        ({"user_id": 10**5000}, "user_id is longer than 255"),  # too long even for str()
        ({"text": ""}, "text or an attachment"),  # nothing to send
        ({"text": None}, "text must be a string"),
        ({"text": "x" * 4097}, "longer than 4096"),  # over the text limit
        ({"text": "bad \ud800 surrogate"}, "not valid Unicode"),  # unencodable
        ({"priority": 1}, "Priority"),  # an int is not a Priority
        ({"priority": "HIGH"}, "Priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),  # bool is not a count
        ({"max_attempts": 2**31}, "from 1 to 2147483647"),  # beyond PostgreSQL's INTEGER column
        ({"max_attempts": 2**63}, "from 1 to 2147483647"),  # beyond SQLite's too
        # the first instant of year 1 at UTC+5 is before datetime.min in UTC, the last of 9999
        # at UTC-5 after datetime.max
        ({"scheduled_at": datetime.min.replace(tzinfo=timezone(timedelta(hours=5)))}, "out of range"),
        ({"scheduled_at": datetime.max.replace(tzinfo=timezone(timedelta(hours=-5)))}, "out of range"),
        ({"scheduled_at": datetime(2030, 1, 1)}, "timezone-aware"),  # naive datetime
        ({"scheduled_at": "tomorrow"}, "datetime"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"attachment": ""}, "attachment"),
        # bidi controls make one number display as another: format characters are refused too
        ({"phone": "+1555\u202e1000"}, "phone must not contain control or format characters \\(U\\+202E\\)"),
        ({"phone": "\u200e+15550001"}, "U\\+200E"),  # left-to-right mark
        ({"user_id": "user\u2067"}, "user_id must not contain control or format"),  # right-to-left isolate
        ({"user_id": "us\u200ber"}, "U\\+200B"),  # zero-width space
        ({"user_id": "\ufeffuser"}, "U\\+FEFF"),  # byte order mark
        ({"phone": "+1555\x850001"}, "U\\+0085"),  # a C1 control (next line)
        ({"idempotency_key": "order\u202a1"}, "idempotency_key must not contain control or format"),
    ],
)
def test_invalid_enqueue_is_refused(changes: dict[str, Any], fragment: str) -> None:
    """Every invalid field raises ValidationError naming the problem."""
    with pytest.raises(ValidationError, match=fragment):
        validate_enqueue(command(**changes), NOW, Limits())


def test_text_limit_is_configurable() -> None:
    """max_text_length is a setting, not a constant."""
    with pytest.raises(ValidationError):
        validate_enqueue(command(text="x" * 11), NOW, Limits(max_text_length=10))
    assert validate_enqueue(command(text="x" * 10), NOW, Limits(max_text_length=10)).text


def test_valid_enqueue_becomes_a_new_message() -> None:
    """A valid command keeps its data, gets the defaults, and a UTC schedule."""
    later = datetime(2030, 1, 2, 12, tzinfo=timezone(timedelta(hours=2)))
    new = validate_enqueue(command(priority=Priority.HIGH, scheduled_at=later), NOW, Limits())
    assert new.max_attempts == Limits().default_max_attempts
    assert new.scheduled_at == later and new.scheduled_at.tzinfo == UTC
    assert new.created_at == NOW and new.priority is Priority.HIGH


def test_attachment_alone_is_enough() -> None:
    """An empty text is fine when there is an attachment."""
    assert validate_enqueue(command(text="", attachment="file-1"), NOW, Limits()).attachment


def test_not_an_enqueue() -> None:
    """Anything but an Enqueue is refused."""
    with pytest.raises(ValidationError):
        validate_enqueue("hello", NOW, Limits())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("broadcast", "fragment"),
    [
        (Broadcast("+1555,42", text="hi"), "sequence of \\(phone, user_id\\) pairs"),  # a string
        (Broadcast([("+1555", "42"), ("+1555",)], text="hi"), "recipient 1 must be a"),  # not a pair
        (Broadcast([("+1555", "42"), ("", "43")], text="hi"), "recipient 1: phone"),
        (Broadcast([("+1555", None)], text="hi"), "recipient 0: user_id"),  # type: ignore[list-item]
        (Broadcast([("+1555", "42")], text=""), "text or an attachment"),
        (Broadcast([("+1555", "42")], text="hi", max_attempts=0), "max_attempts"),
        (Broadcast([("+1555", "42")], text="hi", idempotency_key="k" * 250), "idempotency_key"),
        (Broadcast([("+1555", "42")], text="hi", scheduled_at=datetime(2030, 1, 1)), "timezone-aware"),
        (Broadcast([("+1555", "42"), ("+1555", "4\u202e3")], text="hi"), "recipient 1: user_id must not"),
    ],
)
def test_invalid_broadcast_is_refused(broadcast: Broadcast, fragment: str) -> None:
    """A bad recipient is named by its place; a bad shared field refuses the whole broadcast."""
    with pytest.raises(ValidationError, match=fragment):
        validate_broadcast(broadcast, NOW, Limits())


def test_broadcast_becomes_one_new_message_per_recipient() -> None:
    """Shared fields are copied to every recipient; keys are derived per recipient by place."""
    later = datetime(2030, 1, 2, tzinfo=timezone(timedelta(hours=-5)))
    news = validate_broadcast(Broadcast([("+1", "a"), ("+2", "b"), ("+1", "a")], text="hi",
                                        priority=Priority.LOW, scheduled_at=later,
                                        idempotency_key="news"), NOW, Limits())
    assert [(n.phone, n.user_id, n.idempotency_key) for n in news] == [
        ("+1", "a", "news:0"), ("+2", "b", "news:1"), ("+1", "a", "news:2")]
    assert {(n.text, n.priority, n.scheduled_at, n.max_attempts, n.created_at) for n in news} == {
        ("hi", Priority.LOW, later.astimezone(UTC), Limits().default_max_attempts, NOW)}


def test_a_batch_checks_every_message_even_with_repeated_values() -> None:
    """Values already checked in a batch are not checked again, but every message still is:
    a bad one after many good ones with the same account is refused."""
    good = [command(text=str(i)) for i in range(5)]
    assert [n.text for n in validate_enqueues(good, NOW, Limits())] == ["0", "1", "2", "3", "4"]
    with pytest.raises(ValidationError, match=r"^message 5: user_id"):
        validate_enqueues([*good, command(user_id=" ")], NOW, Limits())
    with pytest.raises(ValidationError, match=r"^message 5: text is longer than 4"):
        validate_enqueues([*good, command(text="hello")], NOW, Limits(max_text_length=4))


@pytest.mark.parametrize("messages", [None, "hello", 42, iter([command()])])
def test_a_batch_must_be_a_sequence(messages: Any) -> None:
    """EnqueueBatch(None), a string or an iterator is a ValidationError, not a TypeError."""
    with pytest.raises(ValidationError, match="sequence of Enqueue"):
        validate_enqueues(messages, NOW, Limits())


def test_an_int_user_id_is_stored_as_its_decimal_text() -> None:
    """python-telegram-bot's chat ids are ints: accepted, and kept as their decimal text."""
    assert validate_enqueue(command(user_id=-1001234567890), NOW, Limits()).user_id == "-1001234567890"
    news = validate_broadcast(Broadcast([("+1", 42), ("+1", "43")], text="hi"), NOW, Limits())
    assert [n.user_id for n in news] == ["42", "43"]


def test_the_extremes_of_a_schedule_and_of_attempts_are_accepted() -> None:
    """Year 9999 and 2**31 - 1 attempts fit every backend's columns."""
    far = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    new = validate_enqueue(command(scheduled_at=far, max_attempts=2**31 - 1), NOW, Limits())
    assert (new.scheduled_at, new.max_attempts) == (far, 2**31 - 1)
