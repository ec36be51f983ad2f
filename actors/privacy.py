"""What may leave postroom in logs and stored errors: masked phones, never texts."""

from __future__ import annotations

from storage import Message

_MAX_ERROR = 500


def mask_phone(phone: str) -> str:
    """Keep the country code's first digits and the last two: enough to tell accounts apart."""
    if len(phone) <= 5:
        return "*" * len(phone)
    return phone[:3] + "*" * (len(phone) - 5) + phone[-2:]


def describe_error(error: BaseException, message: Message) -> str:
    """The error's type and text for `last_error`, with the message's own data redacted.

    Senders often put the recipient or the text into their exception messages; the
    stored error must not become a copy of them.
    """
    text = f"{type(error).__name__}: {error}"
    for secret in sorted({message.phone, message.user_id, message.text}, key=len, reverse=True):
        if len(secret) >= 3:
            text = text.replace(secret, "[redacted]")
    return text[:_MAX_ERROR]
