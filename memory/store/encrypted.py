"""Column types that encrypt a value on its way into the database and decrypt it on its way out.

Each type names its place (``table.column``), which is bound into the ciphertext as associated
data. They use the keyring of :func:`memory.store.crypto.installed`; a value written before encryption
(no header) reads as it is, and is encrypted the next time it is written or by
``omi-letta rotate-key``. Columns of these types cannot be searched or compared in SQL.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import JSON, LargeBinary, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from memory.store.crypto import installed, key_id_of

__all__ = ["Encrypted", "EncryptedBytes", "EncryptedJSON", "EncryptedText"]


class Encrypted(TypeDecorator[Any]):
    """Base of the encrypted column types; ``where`` is the place bound into each value."""

    impl: TypeEngine[Any] | type[TypeEngine[Any]] = Text
    cache_ok = True

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where


class EncryptedText(Encrypted):
    """Text, stored as ``enc:v1:<key id>:<base64>``."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else installed().encrypt_text(value, self.where)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else installed().decrypt_text(value, self.where)


class EncryptedJSON(Encrypted):
    """A JSON value, stored as a JSON string holding its encrypted text (a Postgres ``json`` column takes it)."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return installed().encrypt_text(json.dumps(value, ensure_ascii=False, separators=(",", ":")), self.where)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, str) and key_id_of(value) is not None:
            return json.loads(installed().decrypt_text(value, self.where))
        return value  # None, or a value written before encryption


class EncryptedBytes(Encrypted):
    """Bytes, stored as the ``enc:v1:<key id>:`` header, the nonce and the ciphertext."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: bytes | None, dialect: Dialect) -> bytes | None:
        return None if value is None else installed().encrypt_bytes(bytes(value), self.where)

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> bytes | None:
        return None if value is None else installed().decrypt_bytes(bytes(value), self.where)
