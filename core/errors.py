"""Every error the service raises on purpose, in one tree; each carries a ``detail`` safe to show.

SettingsError (ValueError)  a setting has a wrong value; the message names the environment variable
AuthError                   a request carries no usable token; the message is safe to show the client
IngestError                 audio in: carries ``detail``
├── UnsupportedAudioError   codec, sample rate or language the stream cannot take
├── DecodeError             one frame or file could not be decoded
├── NotEnoughSpeechError    a voice enrollment has too little speech to build a profile from
├── MissingDependencyError  a system library (libopus) or model is not installed
└── SpeechToTextError       a streaming speech-to-text service refused or dropped a stream
StorageError                memory: carries ``detail`` and ``transient``
├── NotFoundError           no such conversation or speaker profile for this user
├── ConflictError           the change clashes with what is stored (a speaker name already taken)
├── EmbeddingError          the text embedding engine failed or could not be loaded
├── VectorIndexError        the vector index (local files or Pinecone) failed
├── DeliveryError           a delivery sink (Letta) refused a change or could not be reached
├── StorageFullError        the disk (or database) is full: nothing more is written until space is freed
└── EncryptionError         a stored value cannot be decrypted: it was altered, or no key is loaded
    └── MissingKeyError     the value was encrypted with a key the keyring does not hold

``app/`` maps them to HTTP statuses and close codes in one place each.
"""

from __future__ import annotations

import errno
import sqlite3

__all__ = [
    "AuthError",
    "ConflictError",
    "DecodeError",
    "DeliveryError",
    "EmbeddingError",
    "EncryptionError",
    "IngestError",
    "MissingDependencyError",
    "MissingKeyError",
    "NotEnoughSpeechError",
    "NotFoundError",
    "SettingsError",
    "SpeechToTextError",
    "StorageError",
    "StorageFullError",
    "UnsupportedAudioError",
    "VectorIndexError",
    "is_disk_full",
]


class SettingsError(ValueError):
    """A setting has a wrong value; the message names the environment variable."""


class AuthError(Exception):
    """The request carries no usable token; the message is safe to show the client."""


class IngestError(Exception):
    """Root of ingest errors."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnsupportedAudioError(IngestError):
    """The stream asks for a codec, sample rate or language we cannot handle."""


class DecodeError(IngestError):
    """A frame or file could not be decoded."""


class NotEnoughSpeechError(IngestError):
    """The audio holds too little speech to build a voice profile from."""


class MissingDependencyError(IngestError):
    """A system library or model is missing; the message says what to install."""


class SpeechToTextError(IngestError):
    """A streaming speech-to-text service refused or dropped a stream.

    ``retryable`` is false when trying again cannot help (a rejected API key, a bad option).
    """

    def __init__(self, detail: str, *, retryable: bool) -> None:
        super().__init__(detail)
        self.retryable = retryable


class StorageError(Exception):
    """Root of memory-layer errors.

    ``transient`` marks a failure of the backend rather than of the request (unreachable, timed
    out, overloaded, answering garbage): the same request may well succeed later, so the outbox
    retries it for as long as that lasts instead of making it a dead letter.
    """

    def __init__(self, detail: str, *, transient: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.transient = transient


class NotFoundError(StorageError):
    """The conversation or speaker profile does not exist or belongs to another user."""


class ConflictError(StorageError):
    """The change would break a uniqueness rule, such as one speaker name per user."""


class EmbeddingError(StorageError):
    """The text embedding engine failed or could not be loaded."""


class VectorIndexError(StorageError):
    """The vector index failed (a Pinecone error, a damaged local file)."""


class DeliveryError(StorageError):
    """A delivery sink refused a change or could not be reached; the outbox retries it later."""


class StorageFullError(StorageError):
    """The disk holding the data (or the database itself) is full; what was being written was not."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps) says the disk or database is full.

    Recognises ``OSError(ENOSPC)``/``EDQUOT``, SQLite's ``SQLITE_FULL`` ("database or disk is full") and
    PostgreSQL's ``disk_full`` (SQLSTATE 53100), also behind SQLAlchemy's wrapper (``.orig``).
    """
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(seen, sqlite3.Error) and getattr(seen, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        if getattr(seen, "sqlstate", None) == "53100":
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


class EncryptionError(StorageError):
    """A stored value cannot be decrypted (it was altered, or moved from another column), or no key is loaded."""


class MissingKeyError(EncryptionError):
    """A stored value was encrypted with a key the loaded keyring does not hold (``key_id`` names it)."""

    def __init__(self, detail: str, key_id: str) -> None:
        super().__init__(detail)
        self.key_id = key_id
