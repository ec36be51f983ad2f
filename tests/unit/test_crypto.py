"""The stored format of encrypted values (storage/crypto.py): plain values are never taken for
encrypted ones, every key held decrypts its own, and bad keys are refused by position."""

from __future__ import annotations

import pytest

pytest.importorskip("cryptography")  # the [crypto] extra ([dev] installs it)
from cryptography.fernet import Fernet

from postroom_common import EncryptionKeyError
from storage.crypto import (
    KEYS_ENV,
    Keyring,
    decode_attachment,
    decode_text,
    encode_attachment,
    encode_text,
    keyring_from_environment,
    sealed_again,
)

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


@pytest.mark.parametrize("text", [
    "",                      # an attachment-only message
    "ÿ starts with U+00FF",  # its UTF-8 (C3 BF) never begins with the byte 0xFF
    "\x00nul and \x01",      # any control character round-trips
    "fernet1:0123456789abcdef:gAAAA",  # looks like an envelope, but has no mark
    "😀" * 1000,
])
def test_plain_and_encrypted_texts_round_trip(text: str) -> None:
    """A text stored plain reads as itself with or without keys; stored encrypted, it holds
    none of its bytes and reads back whole."""
    keys = Keyring([NEW])
    assert decode_text(encode_text(text, None), keys) == text
    assert decode_text(encode_text(text, None), None) == text
    sealed = encode_text(text, keys)
    assert sealed[:1] == b"\xff" and (not text or text.encode() not in sealed)
    assert decode_text(sealed, keys) == text


def test_attachments_round_trip_and_none_stays_none() -> None:
    """An attachment is encrypted behind U+0001 (refused in attachments by the door); None stays None."""
    keys = Keyring([NEW])
    sealed = encode_attachment("file-id-1", keys)
    assert sealed is not None and sealed.startswith("\x01") and "file-id" not in sealed
    assert decode_attachment(sealed, keys) == "file-id-1"
    assert decode_attachment("file-id-1", keys) == "file-id-1"
    assert encode_attachment(None, keys) is None and decode_attachment(None, keys) is None


def test_every_key_held_decrypts_and_the_first_encrypts() -> None:
    """Values under an old key read with the new one first; sealed again, they are under the new."""
    old = Keyring([OLD])
    both = Keyring([NEW, OLD])
    text, attachment = encode_text("hello", old), encode_attachment("ref", old)
    assert decode_text(text, both) == "hello"
    again = sealed_again(text, attachment, both)
    assert again[0].startswith(both.text_prefix()) and again[1] is not None
    assert again[1].startswith(both.attachment_prefix())
    assert decode_text(again[0], Keyring([NEW])) == "hello"


def test_a_value_under_a_key_not_held_is_a_typed_error() -> None:
    """Another key, no key, or an altered token: `EncryptionKeyError`, never a wrong text."""
    sealed = encode_text("hello", Keyring([OLD]))
    with pytest.raises(EncryptionKeyError, match=KEYS_ENV):
        decode_text(sealed, Keyring([NEW]))
    with pytest.raises(EncryptionKeyError, match=KEYS_ENV):
        decode_text(sealed, None)
    altered = sealed[:-5] + b"AAAAA"
    with pytest.raises(EncryptionKeyError, match="does not decrypt"):
        decode_text(altered, Keyring([OLD]))


@pytest.mark.parametrize("value", ["short", "x" * 44, f"{NEW},", f"{NEW}, not-a-key"])
def test_the_variable_is_read_and_bad_keys_are_refused_by_position(value: str) -> None:
    """Blank entries are ignored; a value that is no Fernet key is named by position, never shown."""
    if value == f"{NEW},":
        keys = keyring_from_environment({KEYS_ENV: value})
        assert keys is not None and len(keys.ids) == 1
        return
    with pytest.raises(EncryptionKeyError, match="is not a Fernet key") as refused:
        keyring_from_environment({KEYS_ENV: value})
    assert "not-a-key" not in str(refused.value) and "xxxx" not in str(refused.value)


def test_no_variable_means_plain() -> None:
    """Unset or blank: no keyring, values written plain."""
    assert keyring_from_environment({}) is None
    assert keyring_from_environment({KEYS_ENV: " , "}) is None
