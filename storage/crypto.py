"""Message text and attachments encrypted at rest (the optional `[crypto]` extra).

Keys come from the environment, read once when a `Storage` is made: `POSTROOM_ENCRYPTION_KEYS`,
comma-separated Fernet keys (`Fernet.generate_key()`); the first encrypts every value written,
every one of them decrypts. Unset or empty: values are written plain, as before.

How a value is stored (format 1), chosen so that a plain value is never taken for an encrypted one:

- `text` (a bytes column): plain, its UTF-8 bytes; encrypted, the byte 0xFF (which UTF-8 never
  uses), then the ASCII envelope;
- `attachment` (a text column): plain, as given (the door refuses control characters in it);
  encrypted, the character U+0001, then the ASCII envelope;
- the envelope: `fernet1:` + the key's id (16 hex digits) + `:` + the Fernet token.

A key's id is a hash of the key (it tells nothing of it): it says which key a value is under,
so that a value is decrypted by its own key, and `postroom rotate-key` finds by SQL the values
not under the first key. Every key that values were written under is named in `postroom_meta`
(`KEY_FACT_PREFIX` + its id) in the transaction that writes them: what `Storage.check_keys`
compares with the keys a process holds when it starts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from postroom_common.errors import EncryptionKeyError

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

__all__ = ["KEYS_ENV", "KEY_FACT_PREFIX", "Keyring", "decode_attachment", "decode_text",
           "encode_attachment", "encode_text", "key_id", "keyring_from_environment", "missing_keys_error",
           "sealed_again"]

#: The environment variable holding the keys.
KEYS_ENV = "POSTROOM_ENCRYPTION_KEYS"
#: postroom_meta key of a key values were written under: this prefix and the key's id.
KEY_FACT_PREFIX = "encryption_key:"

_TEXT_MARK = b"\xff"
_ATTACHMENT_MARK = "\x01"
_FORMAT = "fernet1:"
_ID_LENGTH = 16
_ENVELOPE_HEAD = len(_FORMAT) + _ID_LENGTH + 1
_INSTALL = "install the [crypto] extra: pip install 'postroom[crypto]'"


def key_id(key: bytes) -> str:
    """The id of a key (its raw bytes): 16 hex digits of a hash, safe to store and print."""
    return hashlib.sha256(b"postroom key id\x00" + key).hexdigest()[:_ID_LENGTH]


class Keyring:
    """The keys of a process: the first encrypts, each decrypts what is under it."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        try:
            from cryptography.fernet import Fernet  # here: the [crypto] extra is optional
        except ImportError as missing:
            raise EncryptionKeyError(f"{KEYS_ENV} is set but cryptography is not installed: "
                                     f"{_INSTALL}") from missing
        if not keys:
            raise EncryptionKeyError(f"{KEYS_ENV} holds no key")
        self._fernets: dict[str, Fernet] = {}
        for position, key in enumerate(keys, 1):
            raw = _raw_key(key, position)
            self._fernets.setdefault(key_id(raw), Fernet(base64.urlsafe_b64encode(raw)))
        self.primary = key_id(_raw_key(keys[0], 1))
        """The id of the key that encrypts."""
        self._primary = self._fernets[self.primary]
        self._head = f"{_FORMAT}{self.primary}:"

    @property
    def ids(self) -> frozenset[str]:
        """The ids of every key held."""
        return frozenset(self._fernets)

    def seal(self, plain: bytes) -> str:
        """The envelope of `plain` under the first key."""
        return self._head + self._primary.encrypt(plain).decode("ascii")

    def open(self, envelope: str) -> bytes:
        """The plain bytes of an envelope; `EncryptionKeyError` when its key is not held or it
        does not decrypt (altered, or a key of the same id but other bytes)."""
        from cryptography.fernet import InvalidToken

        fernet = self._fernets.get(_id_of(envelope))
        if fernet is None:
            raise EncryptionKeyError(_not_held(_id_of(envelope)))
        try:
            return fernet.decrypt(envelope[_ENVELOPE_HEAD:].encode("ascii"))
        except (InvalidToken, UnicodeEncodeError) as bad:
            raise EncryptionKeyError(f"a stored value under key {_id_of(envelope)} does not decrypt: "
                                     "it was altered, or the key given is not the one it was "
                                     "written with") from bad

    def text_prefix(self) -> bytes:
        """How a text under the first key begins in the database."""
        return _TEXT_MARK + self._head.encode("ascii")

    def attachment_prefix(self) -> str:
        """How an attachment under the first key begins in the database."""
        return _ATTACHMENT_MARK + self._head


def keyring_from_environment(environ: Mapping[str, str] | None = None) -> Keyring | None:
    """The keys `POSTROOM_ENCRYPTION_KEYS` names; None when it is unset or empty (plain)."""
    value = (os.environ if environ is None else environ).get(KEYS_ENV, "")
    keys = [key.strip() for key in value.split(",") if key.strip()]
    return Keyring(keys) if keys else None


def encode_text(text: str, keys: Keyring | None) -> bytes:
    """What the `text` column stores for `text`."""
    plain = text.encode("utf-8")
    return plain if keys is None else _TEXT_MARK + keys.seal(plain).encode("ascii")


def decode_text(stored: bytes | memoryview, keys: Keyring | None) -> str:
    """The text a `text` column's value stands for, plain or encrypted."""
    raw = bytes(stored)
    if raw[:1] != _TEXT_MARK:
        return raw.decode("utf-8")
    envelope = raw[1:].decode("ascii", "replace")  # a damaged one fails to decrypt, typed
    return _keys_for(keys, envelope).open(envelope).decode("utf-8")


def encode_attachment(attachment: str | None, keys: Keyring | None) -> str | None:
    """What the `attachment` column stores for `attachment`."""
    if attachment is None or keys is None:
        return attachment
    return _ATTACHMENT_MARK + keys.seal(attachment.encode("utf-8"))


def decode_attachment(stored: str | None, keys: Keyring | None) -> str | None:
    """The attachment an `attachment` column's value stands for, plain or encrypted."""
    if stored is None or not stored.startswith(_ATTACHMENT_MARK):
        return stored
    return _keys_for(keys, stored[1:]).open(stored[1:]).decode("utf-8")


def sealed_again(text: bytes, attachment: str | None, keys: Keyring) -> tuple[bytes, str | None]:
    """A row's stored text and attachment (plain or under any key held) under the first key."""
    return (encode_text(decode_text(text, keys), keys),
            encode_attachment(decode_attachment(attachment, keys), keys))


def _keys_for(keys: Keyring | None, envelope: str) -> Keyring:
    if keys is None:
        raise EncryptionKeyError(f"a stored value is encrypted (key {_id_of(envelope)}) and no key "
                                 f"is set: set {KEYS_ENV}")
    return keys


def _id_of(envelope: str) -> str:
    return envelope[len(_FORMAT):len(_FORMAT) + _ID_LENGTH]


def _not_held(ids: str) -> str:
    return (f"values of this database are encrypted under key {ids}, which {KEYS_ENV} does not "
            "hold: set it to the keys the database was written with (the new key first, the "
            "old ones after it while `postroom rotate-key` runs)")


def missing_keys_error(missing: Sequence[str], keys: Keyring | None) -> EncryptionKeyError:
    """The error of a process lacking keys the database's values are under (their ids)."""
    names = ", ".join(sorted(missing))
    if keys is None:
        return EncryptionKeyError(f"this database holds messages encrypted under key {names} and "
                                  f"no key is set: set {KEYS_ENV} (comma-separated Fernet keys, "
                                  "the one that encrypts first); nothing was read or written")
    return EncryptionKeyError(_not_held(names) + "; nothing was read or written")


def _raw_key(key: str | bytes, position: int) -> bytes:
    """A Fernet key's 32 bytes; `EncryptionKeyError` naming its position (never the key)."""
    try:
        raw = base64.urlsafe_b64decode(key.encode("ascii") if isinstance(key, str) else key)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != 32:
        raise EncryptionKeyError(f"key {position} of {KEYS_ENV} is not a Fernet key (32 url-safe "
                                 "base64-encoded bytes, as Fernet.generate_key() makes)")
    return raw
