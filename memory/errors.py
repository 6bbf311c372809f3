"""Errors raised by the memory layer.

StorageError            root; carries ``detail``
└── NotFoundError       no such conversation for this user
"""

from __future__ import annotations

__all__ = ["NotFoundError", "StorageError"]


class StorageError(Exception):
    """Root of memory-layer errors."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFoundError(StorageError):
    """The conversation does not exist or belongs to another user."""
