"""Masking and redaction: phone numbers and texts never leave in clear."""

from __future__ import annotations

import html
import json
import urllib.parse
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


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_describe_error_survives_a_str_raising_a_base_exception(raised: type[BaseException]) -> None:
    """An exception whose __str__ raises KeyboardInterrupt or SystemExit is described by its
    type too: it stopped the whole supervisor, leaving rows `processing`."""

    class Hostile(Exception):
        def __str__(self) -> str:
            raise raised

    assert describe_error(Hostile(), _message("hi")) == "Hostile: (its message could not be read)"


UNICODE_TEXT = 'Ваш код 771-204 & <b>"не"</b> показывайте — ß, 😀, ok?'


@pytest.mark.parametrize("text", [SECRET_TEXT, UNICODE_TEXT], ids=["ascii", "unicode"])
@pytest.mark.parametrize("quote", [
    lambda t: f"GET /send?chat=7&text={urllib.parse.quote(t)} failed",  # a URL's query
    lambda t: f"GET /send?text={urllib.parse.quote(t, safe='')}",
    lambda t: f"body was text={urllib.parse.quote_plus(t)}&x=1",  # a form body
    lambda t: f"<p>{html.escape(t)}</p>",  # an HTML error page echoing it
    lambda t: f"REJECTED: {t.upper()}",  # an API that upper-cases what it quotes
    lambda t: f"Rejected: {t.lower()}",
    lambda t: "GET /s?q=" + urllib.parse.quote(json.dumps({"text": t})),  # JSON in a query string
    lambda t: html.escape(repr(t)),  # a repr in an HTML page
], ids=["query", "query-safe", "form", "html", "upper", "lower", "json-in-query", "repr-in-html"])
def test_describe_error_redacts_encoded_and_recased_forms(text: str, quote: Any) -> None:
    """The text URL-encoded, form-encoded, HTML-escaped or re-cased does not survive, nor does
    any 8-character piece of it."""
    stored = describe_error(RuntimeError(quote(text)), _message(text))
    readings = [stored, urllib.parse.unquote_plus(stored), html.unescape(stored)]
    for k in range(len(text) - 7):
        piece = text[k:k + 8].casefold()
        assert not any(piece in reading.casefold() for reading in readings), (piece, stored)
    assert "[redacted]" in stored


@pytest.mark.parametrize("offset", range(8))
def test_an_eight_character_run_at_any_offset_is_redacted(offset: int) -> None:
    """A run of 8 characters of the text is redacted wherever it starts (the runs were
    indexed every fourth character: three offsets in four got through)."""
    text = "abcdefghijklmnopqrstuvwxyz0123456789"
    stored = describe_error(RuntimeError(f"<{text[offset + 9:offset + 17]}>"), _message(text))
    assert stored == "RuntimeError: <[redacted]>"


def test_an_error_sharing_only_short_pieces_is_kept() -> None:
    """Seven characters in common, or an escape that decodes to nothing of the message, is no
    copy of it: the error is stored as it is."""
    text = "abcdefghijklmnopqrstuvwxyz"
    error = "near abcdefg, %41%42 &amp; \\u0041 at 30 s"
    assert describe_error(RuntimeError(error), _message(text)) == f"RuntimeError: {error}"
