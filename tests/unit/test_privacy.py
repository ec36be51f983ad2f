"""Masking and redaction: phone numbers and texts never leave in clear."""

from __future__ import annotations

from datetime import UTC, datetime

from actors.privacy import describe_error, mask_phone
from storage import Message, Priority, Status

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
