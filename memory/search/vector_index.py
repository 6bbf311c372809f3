"""The vector index contract: turn embeddings of each user, searched by cosine with filters."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import msgspec
import numpy as np
from numpy.typing import NDArray

__all__ = ["DenseView", "IndexHit", "IndexItem", "Turn", "TurnFilter", "TurnText", "VectorIndex"]


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
    """A finalized turn of user ``uid`` to make searchable.

    ``before`` is the line ("speaker: text") of the turn before it in its conversation, embedded
    with it (never stored): a reply means little without what it answers.
    """

    uid: str
    before: str = ""


class IndexItem(Turn, kw_only=True):
    """One turn in the vector index; ``vector`` has unit length."""

    vector: NDArray[np.float32]


class IndexHit(TurnText, kw_only=True):
    """A turn found by a search, with its score (cosine similarity for a vector search)."""

    score: float


class DenseView(msgspec.Struct, kw_only=True):
    """One query's vector side, for fusion: the nearest turns, and the spread of all turns' cosines.

    ``scores`` holds the cosine of every hit and of the other turns asked for; ``mean`` and ``sd``
    are over every turn that passes the filters (exact for the local index; estimated from the
    hits where the index returns only those).
    """

    hits: list[IndexHit]
    scores: dict[str, float]
    mean: float
    sd: float


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

    async def scored(
        self, uid: str, vector: NDArray[np.float32], limit: int, where: TurnFilter, ids: Sequence[str] = ()
    ) -> DenseView:
        """The nearest ``limit`` turns, the cosines of turns ``ids`` too where the index can tell them
        cheaply, and the cosines' mean and spread (default: estimated from the hits alone)."""
        hits = await self.nearest(uid, vector, limit, where)
        values = np.array([h.score for h in hits], dtype=np.float64)
        return DenseView(
            hits=hits,
            scores={h.turn_id: h.score for h in hits},
            mean=float(values.mean()) if len(values) else 0.0,
            sd=float(values.std()) if len(values) else 0.0,
        )

    @abstractmethod
    async def fetch(self, uid: str, ids: Sequence[str]) -> list[IndexItem]:
        """The user's stored turns among ``ids`` (unknown ids are left out), in the order asked."""

    @abstractmethod
    async def count(self, uid: str) -> int:
        """How many turns the user has in the index."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and connections."""
