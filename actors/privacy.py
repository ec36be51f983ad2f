"""What may leave postroom in logs and stored errors: masked phones, never texts."""

from __future__ import annotations

import hashlib
import json

from postroom_common import Message

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

    Senders often put the recipient, the text or the whole message into their exception
    messages, quoted (`{text!r}`), escaped or cut short; the stored error must not become a
    copy of them. Each of phone, user_id, text, attachment and idempotency key is redacted as
    it is and in its repr and JSON forms, and so is any run of `_RUN` or more characters the
    error shares with one of them (a prefix of the text, a line of it). Describing an error
    never fails: an exception whose `str()` raises is described by its type alone.
    """
    name = type(error).__name__
    try:
        text = str(error)
    except Exception:  # noqa: BLE001 - a broken __str__ must not crash the account recording it
        return f"{name}: (its message could not be read)"
    return f"{name}: {_redact(text[:_MAX_ERROR], _secrets(message))}"[:_MAX_ERROR]


#: Shared runs this long or longer are redacted; shorter secrets only where they stand whole.
_RUN = 8
#: Secrets are indexed by the runs starting every `_STEP` characters (a 4 KB text: a thousand
#: runs, not four thousand); a shared run then loses at most `_STEP - 1` characters at each end
#: to the redaction's reach, too few to say anything.
_STEP = 4
_REDACTED = "[redacted]"


def _secrets(message: Message) -> list[str]:
    """Every form of the message's data that an exception message may quote."""
    forms: set[str] = set()
    for value in (message.phone, message.user_id, message.text, message.attachment,
                  message.idempotency_key):
        if value:
            forms.update((value, repr(value)[1:-1], json.dumps(value)[1:-1]))
    return sorted((form for form in forms if len(form) >= 3), key=len, reverse=True)


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
    return _redact_shared_runs(text, [s for s in secrets if len(s) >= _RUN])


def _redact_shared_runs(text: str, secrets: list[str]) -> str:
    """Replace every run of `_RUN`+ characters of `text` that also stands in a secret."""
    if len(text) < _RUN or not secrets:
        return text
    windows = {secret[i:i + _RUN] for secret in secrets for i in range(0, len(secret) - _RUN + 1, _STEP)}
    hidden = [False] * len(text)
    for i in range(len(text) - _RUN + 1):
        if text[i:i + _RUN] in windows:
            hidden[i:i + _RUN] = [True] * _RUN
    if not any(hidden):
        return text
    out: list[str] = []
    for i, char in enumerate(text):
        if not hidden[i]:
            out.append(char)
        elif i == 0 or not hidden[i - 1]:
            out.append(_REDACTED)
    return "".join(out)
