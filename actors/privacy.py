"""What may leave postroom in logs and stored errors: masked phones, never texts."""

from __future__ import annotations

import codecs
import hashlib
import html
import re
import sys
from collections.abc import Callable
from typing import NamedTuple

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
    messages, quoted (`{text!r}`), escaped, URL-encoded (a GET query, a form body),
    HTML-escaped, upper-cased or cut short; the stored error must not become a copy of them.
    The error is read as it is and decoded each of those ways (`_views`), and wherever a view
    shows one of phone, user_id, text, attachment or idempotency key whole, or any run of
    `_RUN` or more characters of one (a prefix of the text, a line of it), whatever case,
    the error's characters behind it are redacted. Describing an error never fails: an
    exception whose `str()` raises, even `KeyboardInterrupt`, is described by its type alone.
    """
    name = type(error).__name__
    try:
        text = str(error)
    except BaseException:  # noqa: BLE001 - a sender's broken __str__ must not stop the account recording it
        return f"{name}: (its message could not be read)"
    return f"{name}: {_redact(text[:_MAX_ERROR], message)}"[:_MAX_ERROR]


#: Shared runs this long or longer are redacted; shorter secrets only where they stand whole.
_RUN = 8
_REDACTED = "[redacted]"

_PERCENT = re.compile(r"(?:%[0-9A-Fa-f]{2})+|\+")
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_ESCAPE = re.compile(r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
                     r"|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|[nrtbf\"'\\/])")
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}

#: What a decoder makes of one match: characters, each with its offsets in the match.
_Decoding = list[tuple[str, int, int]]


class _View(NamedTuple):
    """The error text read one way: its characters, and the span of the error text behind each."""

    chars: str
    spans: list[tuple[int, int]] | None = None
    """None: character i is the error's own character i."""

    def span(self, first: int, last: int) -> tuple[int, int]:
        """The error text behind characters `first` to `last`, both included."""
        if self.spans is None:
            return first, last + 1
        return self.spans[first][0], self.spans[last][1]


def _redact(text: str, message: Message) -> str:
    """`text` with every stretch that shows the message's data replaced by `_REDACTED`."""
    short, windows = _secrets(message)
    if not short and not windows:
        return text
    hidden = [False] * len(text)
    for view in _views(text):
        for start, end in _found(view, short, windows):
            hidden[start:end] = [True] * (end - start)
    out: list[str] = []
    for i, char in enumerate(text):
        if not hidden[i]:
            out.append(char)
        elif i == 0 or not hidden[i - 1]:
            out.append(_REDACTED)
    return "".join(out)


def _secrets(message: Message) -> tuple[list[str], set[str]]:
    """The message's values, case-folded: those shorter than `_RUN` (at least 3 characters),
    found whole, and every `_RUN`-character run of the longer ones (built once per error)."""
    short: list[str] = []
    windows: set[str] = set()
    for value in (message.phone, message.user_id, message.text, message.attachment,
                  message.idempotency_key):
        folded = value.casefold() if value else ""
        if len(folded) >= _RUN:
            windows.update(folded[i:i + _RUN] for i in range(len(folded) - _RUN + 1))
        elif len(folded) >= 3:
            short.append(folded)
    return short, windows


def _views(text: str) -> list[_View]:
    """The error as it is and decoded from each quoting a sender may have used: percent-encoding
    (`quote`, `quote_plus`), HTML entities, backslash escapes (repr, JSON), and all three in
    turn (a JSON body in a query string); each case-folded. Only the decodings that change
    something are made: most errors are read once."""
    plain = _View(text)
    unquoted = _decoded(plain, _PERCENT, _unquoted)
    views = [plain, unquoted, _decoded(plain, _ENTITY, _unescaped_entity),
             _decoded(plain, _ESCAPE, _unescaped)]
    if unquoted is not None:
        nested = _decoded(unquoted, _ENTITY, _unescaped_entity) or unquoted
        nested = _decoded(nested, _ESCAPE, _unescaped) or nested
        views.append(nested if nested is not unquoted else None)
    return [_folded(view) for view in views if view is not None]


def _found(view: _View, short: list[str], windows: set[str]) -> list[tuple[int, int]]:
    """The spans of the error text behind each secret and each shared run the view shows."""
    chars = view.chars
    spans = [view.span(i, i + _RUN - 1) for i in range(len(chars) - _RUN + 1) if chars[i:i + _RUN] in windows]
    for secret in short:
        at = chars.find(secret)
        while at >= 0:
            spans.append(view.span(at, at + len(secret) - 1))
            at = chars.find(secret, at + 1)
    return spans


def _decoded(view: _View, pattern: re.Pattern[str], decode: Callable[[str], _Decoding]) -> _View | None:
    """`view` with each match of `pattern` replaced by its decoding, each character of which
    stands for the error text behind its own source characters; None if nothing matches."""
    chars, spans = view.chars, _spans(view)
    out: list[str] = []
    out_spans: list[tuple[int, int]] = []
    last = 0
    for match in pattern.finditer(chars):
        at = match.start()
        out.append(chars[last:at])
        out_spans += spans[last:at]
        for char, begin, end in decode(match[0]):
            out.append(char)
            out_spans.append((spans[at + begin][0], spans[at + end - 1][1]))
        last = match.end()
    if not last:
        return None
    out.append(chars[last:])
    return _View("".join(out), out_spans + spans[last:])


def _folded(view: _View) -> _View:
    """The view case-folded (`ß` and `SS` alike), each folded character behind its source's span."""
    folded = view.chars.casefold()
    if len(folded) == len(view.chars):  # no character folded into several: the spans still line up
        return _View(folded, view.spans)
    spans = _spans(view)
    pairs = [(fold, span) for char, span in zip(view.chars, spans, strict=True) for fold in char.casefold()]
    return _View("".join(fold for fold, _ in pairs), [span for _, span in pairs])


def _spans(view: _View) -> list[tuple[int, int]]:
    return view.spans if view.spans is not None else [(i, i + 1) for i in range(len(view.chars))]


def _unquoted(run: str) -> _Decoding:
    """A run of %XX escapes as UTF-8 (or a "+", a space in a form body), character by character."""
    if run == "+":
        return [(" ", 0, 1)]
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    chars: _Decoding = []
    begin = 0
    for k in range(0, len(run), 3):
        decoded = decoder.decode(bytes.fromhex(run[k + 1:k + 3]))
        if decoded:
            chars += [(char, begin, k + 3) for char in decoded]
            begin = k + 3
    chars += [(char, begin, len(run)) for char in decoder.decode(b"", final=True)]
    return chars


def _unescaped_entity(entity: str) -> _Decoding:
    return [(char, 0, len(entity)) for char in html.unescape(entity)]


def _unescaped(escape: str) -> _Decoding:
    """One backslash escape of repr or JSON (a surrogate pair as one character)."""
    kind = escape[1]
    if kind not in "uUx":
        char = _SIMPLE_ESCAPES.get(kind, kind)
    elif len(escape) == 12:  # \uD83D\uDE00
        pair = chr(int(escape[2:6], 16)) + chr(int(escape[8:12], 16))
        char = pair.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    else:
        code = int(escape[2:], 16)
        char = chr(code) if code <= sys.maxunicode else escape
    return [(each, 0, len(escape)) for each in char]
