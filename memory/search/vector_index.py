"""The vector index contract: turn embeddings of each user, searched by cosine with filters."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import msgspec
import numpy as np
from numpy.typing import NDArray

__all__ = ["IndexHit", "IndexItem", "Turn", "TurnFilter", "TurnText", "VectorIndex"]


class TurnText(msgspec.Struct, kw_only=True):
    """What a search knows of a turn: who said what, when, in which conversation. Times are epoch seconds."""

    turn_id: str
    conversation_id: str
    speaker: str
    is_user: bool
    start: float
    end: float
    text: str


class Turn(TurnText, kw_only=True):
    """A finalized turn of user ``uid`` to make searchable."""

    uid: str


class IndexItem(Turn, kw_only=True):
    """One turn in the vector index; ``vector`` has unit length."""

    vector: NDArray[np.float32]


class IndexHit(TurnText, kw_only=True):
    """A turn found by a search, with its score (cosine similarity for a vector search)."""

    score: float


class TurnFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which turns a search may return; the filters combine with AND.

    ``speaker`` matches the stored name exactly, ``conversation_id`` one conversation, and
    ``since``/``until`` (epoch seconds) keep turns that overlap that span (``end >= since`` and
    ``start <= until``).
    """

    speaker: str | None = None
    conversation_id: str | None = None
    since: float | None = None
    until: float | None = None


class VectorIndex(ABC):
    """Turn vectors kept apart per user (``uid``); a turn is keyed by ``(uid, turn_id)``.

    Every method is a coroutine. Upserting a known ``turn_id`` replaces that turn. The filters
    of :meth:`query` are a :class:`TurnFilter`'s. Hits come best first.
    Implementations translate their own errors to :class:`core.errors.VectorIndexError`,
    and release what they hold in :meth:`close`.
    """

    name: str
    """Short name of the backend, e.g. ``local``."""

    @abstractmethod
    async def upsert(self, items: Sequence[IndexItem]) -> None:
        """Add or replace turns (of any users)."""

    @abstractmethod
    async def delete(self, uid: str, ids: Sequence[str] | None = None, conversation_id: str | None = None) -> None:
        """Remove the user's turns ``ids``, or those of one conversation, or (neither given) all of them."""

    async def query(
        self,
        uid: str,
        vector: NDArray[np.float32],
        *,
        limit: int,
        speaker: str | None = None,
        conversation_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[IndexHit]:
        """The user's ``limit`` turns most similar to ``vector`` that pass the filters."""
        where = TurnFilter(speaker=speaker, conversation_id=conversation_id, since=since, until=until)
        return await self.nearest(uid, vector, limit, where)

    @abstractmethod
    async def nearest(self, uid: str, vector: NDArray[np.float32], limit: int, where: TurnFilter) -> list[IndexHit]:
        """:meth:`query`, with the filters in one value."""

    @abstractmethod
    async def fetch(self, uid: str, ids: Sequence[str]) -> list[IndexItem]:
        """The user's stored turns among ``ids`` (unknown ids are left out), in the order asked."""

    @abstractmethod
    async def count(self, uid: str) -> int:
        """How many turns the user has in the index."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and connections."""
