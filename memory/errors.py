"""Errors raised by the memory layer.

StorageError            root; carries ``detail``
├── NotFoundError       no such conversation or speaker profile for this user
├── ConflictError       the change clashes with what is stored (a speaker name already taken)
├── EmbeddingError      the text embedding engine failed or could not be loaded
├── VectorIndexError    the vector index (local files or Pinecone) failed
└── DeliveryError       a delivery sink (Letta) refused a change or could not be reached
"""

from __future__ import annotations

__all__ = ["ConflictError", "DeliveryError", "EmbeddingError", "NotFoundError", "StorageError", "VectorIndexError"]


class StorageError(Exception):
    """Root of memory-layer errors."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


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
