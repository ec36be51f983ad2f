"""Masking and redaction: phone numbers and texts never leave in clear."""

from __future__ import annotations

from datetime import UTC, datetime

from actors.privacy import describe_error, mask_phone
from storage import Message, Priority, Status

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_mask_phone_keeps_only_the_ends() -> None:
    """Only the first three and last two characters survive."""
    assert mask_phone("+15550001234") == "+15*******34"
    assert "5550001" not in mask_phone("+15550001234")
    assert mask_phone("123") == "***"


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
