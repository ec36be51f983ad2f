"""What may leave postroom in logs and stored errors: masked phones, never texts."""

from __future__ import annotations

import hashlib

from storage import Message

_MAX_ERROR = 500


def mask_phone(phone: str) -> str:
    """The country code's first digits, the last two, and four hex digits of a hash of the
    whole phone: `+15*******01~c5af`. Two accounts alike at both ends still differ, in every
    process alike (no salt), while the hidden digits stay hidden."""
    ends = "*" * len(phone) if len(phone) <= 5 else phone[:3] + "*" * (len(phone) - 5) + phone[-2:]
    return f"{ends}~{_phone_hash(phone)}"


def _phone_hash(phone: str) -> str:
    # Two bytes: enough to tell a bot's accounts apart, too few to single out a number
    # among the many the mask leaves possible.
    return hashlib.blake2s(phone.encode("utf-8", "surrogatepass"), digest_size=2).hexdigest()


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
