"""Errors raised by the memory layer.

StorageError            root; carries ``detail``
├── NotFoundError       no such conversation or speaker profile for this user
└── ConflictError       the change clashes with what is stored (a speaker name already taken)
"""

from __future__ import annotations

__all__ = ["ConflictError", "NotFoundError", "StorageError"]


class StorageError(Exception):
    """Root of memory-layer errors."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFoundError(StorageError):
    """The conversation or speaker profile does not exist or belongs to another user."""


class ConflictError(StorageError):
    """The change would break a uniqueness rule, such as one speaker name per user."""
