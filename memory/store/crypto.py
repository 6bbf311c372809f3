"""Encryption at rest: AES-256-GCM over single stored values, with keys kept in a :class:`Keyring`.

An encrypted value starts with a header, ``enc:v1:<key id>:``, then holds a fresh 12-byte nonce
and the ciphertext with its 16-byte tag: as base64 (URL alphabet) after the header in a text
column, as raw bytes in a binary one. The key id (12 hex digits of a SHA-256 of the key) tells
which key of the keyring opens the value, so values written under an older key stay readable
while ``omi-letta rotate-key`` re-encrypts them. The associated data is the header and the place
the value belongs (``segments.text``), so a value copied into another column or file fails its
tag check. A value without the header was written before encryption and is read as it is.

The keyring that the storage layer uses is process-wide and set once at startup with
:func:`install` (by ``app.ops.keys.unlock``); nothing reads or writes an encrypted place before that.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.errors import EncryptionError, MissingKeyError

__all__ = ["KEY_BYTES", "Keyring", "decode_key", "encode_key", "install", "installed", "key_id", "key_id_of"]

KEY_BYTES = 32
"""AES-256."""
NONCE_BYTES = 12
PREFIX = "enc:v1:"
_PREFIX_BYTES = PREFIX.encode()
_ID_CHARS = 12
_HEADER_CHARS = len(PREFIX) + _ID_CHARS + 1  # enc:v1:<id>:


def key_id(key: bytes) -> str:
    """The id of ``key``: 12 hex digits of a SHA-256 of it (says nothing about the key itself)."""
    return hashlib.sha256(b"omi-letta key id\0" + key).hexdigest()[:_ID_CHARS]


def encode_key(key: bytes) -> str:
    """A key as standard base64, the way ``ENCRYPTION_KEY`` and the key file hold it."""
    return base64.b64encode(key).decode()


def decode_key(text: str) -> bytes:
    """A base64 key back to its 32 bytes.

    Raises:
        ValueError: not base64, or not 32 bytes long.
    """
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("an encryption key must be base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"an encryption key must be {KEY_BYTES} bytes (base64 of 256 bits), not {len(key)}")
    return key


def key_id_of(value: str | bytes) -> str | None:
    """The id of the key that encrypted a stored value; None for a value written before encryption."""
    if isinstance(value, str):
        return value[len(PREFIX) : _HEADER_CHARS - 1] if value.startswith(PREFIX) else None
    return (
        value[len(PREFIX) : _HEADER_CHARS - 1].decode("ascii", "replace") if value.startswith(_PREFIX_BYTES) else None
    )


class Keyring:
    """Encryption keys by id: the current one encrypts, any of them decrypts."""

    __slots__ = ("_ciphers", "_keys", "current_id")

    def __init__(self, current: bytes, old: Iterable[bytes] = ()) -> None:
        keys = [current, *old]
        for key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError(f"an encryption key must be {KEY_BYTES} bytes, not {len(key)}")
        self._keys = {key_id(key): key for key in reversed(keys)}
        self._ciphers = {kid: AESGCM(key) for kid, key in self._keys.items()}
        self.current_id = key_id(current)

    @staticmethod
    def new_key() -> bytes:
        """A fresh random 256-bit key."""
        return AESGCM.generate_key(bit_length=256)

    @classmethod
    def generate(cls) -> Keyring:
        """A keyring of one fresh key."""
        return cls(cls.new_key())

    @property
    def ids(self) -> list[str]:
        """Ids of every key held, the current one first."""
        return [self.current_id, *(k for k in self._keys if k != self.current_id)]

    @property
    def current(self) -> bytes:
        """The key new values are encrypted with."""
        return self._keys[self.current_id]

    def by_id(self) -> dict[str, bytes]:
        """Every key by its id, the current one first."""
        return {kid: self._keys[kid] for kid in self.ids}

    def old(self) -> list[bytes]:
        """The keys kept only to read older values."""
        return [key for kid, key in self._keys.items() if kid != self.current_id]

    def derive(self, label: bytes) -> bytes:
        """A 32-byte secret for ``label``, the same wherever this current key is (HMAC-SHA256)."""
        return hmac.new(self.current, b"omi-letta derive\0" + label, hashlib.sha256).digest()

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def encrypt_bytes(self, data: bytes, where: str) -> bytes:
        """``data`` encrypted with the current key for the place ``where`` (``table.column``)."""
        header = f"{PREFIX}{self.current_id}:".encode()
        nonce = os.urandom(NONCE_BYTES)
        return header + nonce + self._ciphers[self.current_id].encrypt(nonce, data, header + where.encode())

    def decrypt_bytes(self, value: bytes, where: str) -> bytes:
        """A value :meth:`encrypt_bytes` made for ``where``; a value without the header comes back as it is.

        Raises:
            MissingKeyError: the value's key is not in this keyring.
            EncryptionError: the value was altered, truncated, or made for another place.
        """
        kid = key_id_of(value)
        if kid is None:
            return value
        header = value[:_HEADER_CHARS]
        return self._open(kid, header, value[_HEADER_CHARS:], where)

    def encrypt_text(self, text: str, where: str) -> str:
        """``text`` encrypted with the current key for ``where``, as header plus base64."""
        sealed = self.encrypt_bytes(text.encode(), where)
        return sealed[:_HEADER_CHARS].decode() + base64.urlsafe_b64encode(sealed[_HEADER_CHARS:]).decode()

    def decrypt_text(self, value: str, where: str) -> str:
        """A value :meth:`encrypt_text` made for ``where``; a value without the header comes back as it is.

        Raises:
            MissingKeyError: the value's key is not in this keyring.
            EncryptionError: the value was altered, truncated, or made for another place.
        """
        kid = key_id_of(value)
        if kid is None:
            return value
        try:
            body = base64.urlsafe_b64decode(value[_HEADER_CHARS:])
        except (binascii.Error, ValueError):
            raise EncryptionError(f"an encrypted value of {where} is damaged (not base64)") from None
        return self._open(kid, value[:_HEADER_CHARS].encode(), body, where).decode()

    def is_current(self, value: str | bytes) -> bool:
        """Whether a stored value is encrypted with the current key (False for one written before encryption)."""
        return key_id_of(value) == self.current_id

    def _open(self, kid: str, header: bytes, body: bytes, where: str) -> bytes:
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise MissingKeyError(f"a value of {where} was encrypted with key {kid}, which is not loaded", kid)
        if len(body) < NONCE_BYTES + 16:
            raise EncryptionError(f"an encrypted value of {where} is damaged (too short)")
        try:
            return cipher.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], header + where.encode())
        except InvalidTag:
            raise EncryptionError(
                f"an encrypted value of {where} fails its check with key {kid}: it was altered or belongs elsewhere"
            ) from None


_installed: Keyring | None = None


def install(keyring: Keyring | None) -> None:
    """Make ``keyring`` the one the storage layer encrypts and decrypts with (None unloads it)."""
    global _installed
    _installed = keyring


def installed() -> Keyring:
    """The keyring set by :func:`install`.

    Raises:
        EncryptionError: none is installed yet.
    """
    if _installed is None:
        raise EncryptionError(
            "no encryption key is loaded: the service loads it at startup (app.ops.keys.unlock) before "
            "any encrypted value is read or written"
        )
    return _installed
