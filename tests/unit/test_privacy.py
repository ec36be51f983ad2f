"""Masking and redaction: phone numbers and texts never leave in clear."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from actors.privacy import describe_error, mask_phone
from postroom_common import Message, Priority, Status

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_mask_phone_keeps_only_the_ends_and_a_short_hash() -> None:
    """Only the first three and last two characters survive, then four hex digits of a hash."""
    assert mask_phone("+15550001234") == "+15*******34~e848"
    assert "5550001" not in mask_phone("+15550001234")
    assert mask_phone("123") == "***~0059"


def test_mask_phone_tells_apart_phones_that_share_their_ends() -> None:
    """Two phones with the same first and last digits get different masks, the same in every process."""
    first, second = mask_phone("+15551230001"), mask_phone("+15559870001")
    assert first != second
    # Literal values: a per-process salt (as in hash()) would break them on the next run.
    assert (first, second) == ("+15*******01~c5af", "+15*******01~5b1b")


def test_describe_error_redacts_the_message_data() -> None:
    """A sender error quoting the recipient, the phone or the text is stored redacted."""
    message = Message(id=1, phone="+19995550123", user_id="user-777", text="secret words",
                      attachment=None, priority=Priority.NORMAL, status=Status.PROCESSING,
                      created_at=NOW, scheduled_at=None, available_at=NOW, attempts=1,
                      max_attempts=3, last_error=None, completed_at=None, updated_at=NOW)
    error = RuntimeError("could not send 'secret words' to user-777 from +19995550123")
    text = describe_error(error, message)
    assert text.startswith("RuntimeError: ")
    for secret in ("secret words", "user-777", "+19995550123"):
        assert secret not in text


def _message(text: str, attachment: str | None = "file-id-4242", key: str | None = "order-0042") -> Message:
    return Message(id=1, phone="+19995550123", user_id="user-777", text=text,
                   attachment=attachment, priority=Priority.NORMAL, status=Status.PROCESSING,
                   created_at=NOW, scheduled_at=None, available_at=NOW, attempts=1,
                   max_attempts=3, last_error=None, completed_at=None, updated_at=NOW,
                   idempotency_key=key)


SECRET_TEXT = 'Your code is 771-204.\nDo not "share" it with anyone, ever: not even support.'


@pytest.mark.parametrize("quote", [
    lambda m: f"bad text {m.text!r}",  # repr escapes the newline and the quotes
    lambda m: f"bad message {m!r}",  # the whole message: text, attachment, key, phone, user
    lambda m: f"cannot send {m.text[:24]}...",  # a prefix, as is
    lambda m: f"cannot send {m.text[:24]!r}...",  # a prefix, quoted
    lambda m: json.dumps({"text": m.text, "attachment": m.attachment}),  # a JSON body echoed back
    lambda m: f"line two was {m.text.splitlines()[1]}",  # a piece from the middle
], ids=["repr", "message-repr", "prefix", "prefix-repr", "json", "middle"])
def test_describe_error_redacts_quoted_forms_and_pieces(quote: Any) -> None:
    """The text, attachment and key do not survive in repr, JSON, prefix or middle form."""
    message = _message(SECRET_TEXT)
    stored = describe_error(RuntimeError(quote(message)), message)
    assert stored.startswith("RuntimeError: ")
    for secret in ("771-204", "share", "anyone", "not even", "file-id-4242", "order-0042",
                   "9995550123", "user-777"):
        assert secret not in stored, (secret, stored)


def test_describe_error_keeps_an_error_that_quotes_nothing() -> None:
    """An error that shares nothing with the message is stored as it is."""
    stored = describe_error(TimeoutError("upstream timed out after 30 s"), _message(SECRET_TEXT))
    assert stored == "TimeoutError: upstream timed out after 30 s"


def test_describe_error_survives_an_exception_whose_str_raises() -> None:
    """An exception whose __str__ raises is described by its type; describing never fails."""

    class Broken(Exception):
        def __str__(self) -> str:
            raise ValueError("no text for you")

    assert describe_error(Broken(), _message("hi")).startswith("Broken: ")
