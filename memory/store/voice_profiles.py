"""Per-user speaker voice profiles: enrolled from audio, matched by cosine similarity, kept up to date.

A profile holds one L2-normalised voice embedding and the seconds of speech it was built from.
More speech for the same person (a second enrollment, or speech confirmed in a conversation) is
folded in as a mean weighted by seconds, so the profile improves instead of being replaced.
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from core.conversation import iso
from core.errors import ConflictError, NotFoundError
from memory.store.models import SpeakerProfileRow

if TYPE_CHECKING:
    from numpy.typing import NDArray
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["EMBEDDING_DIM", "MAX_NAME_CHARS", "MAX_WEIGHT_S", "WEARER_NAME", "SpeakerProfile", "SpeakerStore"]

EMBEDDING_DIM = 256
"""Length of a voice embedding (the GE2E encoder's output)."""
MAX_WEIGHT_S = 300.0
"""Most seconds a profile's own embedding weighs against new speech in :meth:`SpeakerStore.absorb`."""
MAX_NAME_CHARS = 100
WEARER_NAME = "me"
"""Name of the wearer's profile unless one is given."""
_RETRIES = 10
_T = TypeVar("_T")


def clean_name(name: str) -> str:
    """A speaker name with its whitespace collapsed.

    Raises:
        ValueError: the name is empty or longer than ``MAX_NAME_CHARS``.
    """
    cleaned = " ".join(name.split())
    if not cleaned:
        raise ValueError("a speaker name must not be empty")
    if len(cleaned) > MAX_NAME_CHARS:
        raise ValueError(f"a speaker name may have at most {MAX_NAME_CHARS} characters, not {len(cleaned)}")
    return cleaned


def _same_name(a: str, b: str) -> bool:
    return a.casefold() == b.casefold()


def _unit(embedding: NDArray[np.float32] | tuple[float, ...]) -> NDArray[np.float32]:
    """``embedding`` as a unit-length float32 vector of ``EMBEDDING_DIM``; ValueError if it cannot be one."""
    vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if vector.shape != (EMBEDDING_DIM,):
        raise ValueError(f"a voice embedding has {EMBEDDING_DIM} values, not {vector.size}")
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm < 1e-8:
        raise ValueError("a voice embedding must be finite and not all zeros")
    return vector / norm


def _blend(
    old: NDArray[np.float32], old_weight: float, new: NDArray[np.float32], new_weight: float
) -> NDArray[np.float32]:
    """The weighted mean of two unit vectors, re-normalised (``new`` alone when there was no voice)."""
    if old.shape != new.shape or old_weight <= 0:
        return new
    mean = old * max(old_weight, 0.0) + new * max(new_weight, 1e-6)
    norm = float(np.linalg.norm(mean))
    return (mean / norm).astype(np.float32) if norm > 1e-6 else new


def _check_seconds(seconds: float) -> float:
    if not np.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"speech seconds must be positive, not {seconds}")
    return float(seconds)


class SpeakerProfile(msgspec.Struct, kw_only=True):
    """A stored voice profile (times in epoch seconds). A person named in the OMI app before their
    voice was heard has one with no speech (``seconds`` 0, an empty embedding), never matched."""

    id: str
    uid: str
    name: str
    is_user: bool
    embedding: NDArray[np.float32]  # (EMBEDDING_DIM,), unit length
    seconds: float
    created_at: float
    updated_at: float

    def to_api(self) -> dict[str, Any]:
        """The profile as the HTTP API and the CLI show it; the embedding stays private."""
        return {
            "id": self.id,
            "name": self.name,
            "is_user": self.is_user,
            "seconds": round(self.seconds, 2),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }

    @property
    def has_voice(self) -> bool:
        """Whether any speech went into it (only then can voices be matched with it)."""
        return self.seconds > 0 and self.embedding.size > 0


def _embedding(row: SpeakerProfileRow) -> NDArray[np.float32]:
    return np.frombuffer(row.embedding, dtype="<f4").astype(np.float32)


def _to_bytes(vector: NDArray[np.float32]) -> bytes:
    return vector.astype("<f4").tobytes()


def _touch(row: SpeakerProfileRow) -> None:
    """Set ``updated_at``, the row's version, to now, and never to the value it had."""
    row.updated_at = max(time.time(), row.updated_at + 1e-6)


def _from_row(row: SpeakerProfileRow) -> SpeakerProfile:
    return SpeakerProfile(
        id=row.id,
        uid=row.uid,
        name=row.name,
        is_user=row.is_user,
        embedding=_embedding(row),
        seconds=row.seconds,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class SpeakerStore:
    """Reads and writes voice profiles, always scoped to one uid. Every write is committed on return.

    Shares the conversation store's engine: ``SpeakerStore(conversation_store.engine)``. Writes are
    optimistic: ``updated_at`` is the row version, and a write that lost a race is run again on
    fresh rows, so concurrent enrollments of one voice all count.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def _write(self, work: Callable[[AsyncSession], Awaitable[_T]]) -> _T:
        """Run ``work`` in a transaction, again if a concurrent write got there first."""
        for attempt in range(_RETRIES):
            try:
                async with self._sessions() as session, session.begin():
                    result = await work(session)
                return result
            except (IntegrityError, StaleDataError):
                if attempt == _RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def enroll(
        self,
        uid: str,
        *,
        name: str | None = None,
        is_user: bool = False,
        embedding: NDArray[np.float32] | tuple[float, ...],
        seconds: float,
    ) -> SpeakerProfile:
        """Add a voice, or fold it into the profile it belongs to.

        With ``is_user`` the voice is the wearer's: it merges into the wearer's profile if there is
        one (whose name is then kept), else into a profile called ``name`` (default ``me``), which
        becomes the wearer's, else a new profile is made. Otherwise it merges into the profile of
        that name, compared without case, or a new one is made. Merging is a mean weighted by seconds.

        Raises:
            ValueError: no name for another speaker, a bad name, embedding or seconds.
        """
        vector = _unit(embedding)
        seconds = _check_seconds(seconds)
        if name is None and not is_user:
            raise ValueError("a speaker other than the wearer needs a name")
        label = clean_name(name) if name is not None else WEARER_NAME

        async def work(session: AsyncSession) -> SpeakerProfile:
            rows = await self._rows(session, uid)
            target = next((r for r in rows if r.is_user), None) if is_user else None
            if target is None:
                target = next((r for r in rows if _same_name(r.name, label)), None)
            if target is None:
                now = time.time()
                target = SpeakerProfileRow(
                    id=str(uuid.uuid4()),
                    uid=uid,
                    name=label,
                    is_user=is_user,
                    embedding=_to_bytes(vector),
                    seconds=seconds,
                    created_at=now,
                    updated_at=now,
                )
                session.add(target)
            else:
                target.embedding = _to_bytes(_blend(_embedding(target), target.seconds, vector, seconds))
                target.seconds += seconds
                target.is_user = target.is_user or is_user
                _touch(target)
            return _from_row(target)

        return await self._write(work)

    async def add_person(self, uid: str, name: str) -> SpeakerProfile:
        """The profile called ``name`` (compared without case), made without a voice if there is none.

        Raises:
            ValueError: a bad name.
        """
        label = clean_name(name)

        async def work(session: AsyncSession) -> SpeakerProfile:
            found = next((r for r in await self._rows(session, uid) if _same_name(r.name, label)), None)
            if found is None:
                now = time.time()
                found = SpeakerProfileRow(
                    id=str(uuid.uuid4()),
                    uid=uid,
                    name=label,
                    is_user=False,
                    embedding=b"",
                    seconds=0.0,
                    created_at=now,
                    updated_at=now,
                )
                session.add(found)
            return _from_row(found)

        return await self._write(work)

    async def list(self, uid: str) -> builtins.list[SpeakerProfile]:
        """The user's profiles: the wearer's first, then by name."""
        async with self._sessions() as session:
            rows = await self._rows(session, uid)
        return [_from_row(r) for r in sorted(rows, key=lambda r: (not r.is_user, r.name.casefold()))]

    async def get(self, uid: str, profile_id: str) -> SpeakerProfile:
        """One of the user's profiles.

        Raises:
            NotFoundError: no such profile for ``uid``.
        """
        async with self._sessions() as session:
            return _from_row(await self._row(session, uid, profile_id))

    async def rename(self, uid: str, profile_id: str, name: str) -> SpeakerProfile:
        """Give a profile a new name.

        Raises:
            NotFoundError: no such profile for ``uid``.
            ConflictError: another of the user's profiles has that name.
            ValueError: the name is empty or too long.
        """
        label = clean_name(name)

        async def work(session: AsyncSession) -> SpeakerProfile:
            row = await self._row(session, uid, profile_id)
            if any(r.id != profile_id and _same_name(r.name, label) for r in await self._rows(session, uid)):
                raise ConflictError(f"a speaker named {label!r} already exists")
            row.name = label
            _touch(row)
            return _from_row(row)

        return await self._write(work)

    async def delete(self, uid: str, profile_id: str) -> None:
        """Delete one of the user's profiles.

        Raises:
            NotFoundError: no such profile for ``uid``.
        """

        async def work(session: AsyncSession) -> None:
            await session.delete(await self._row(session, uid, profile_id))

        await self._write(work)

    async def delete_all(self, uid: str) -> int:
        """Delete every profile of the user (their data is erased); how many there were."""
        async with self._sessions() as session, session.begin():
            result: Any = await session.execute(delete(SpeakerProfileRow).where(SpeakerProfileRow.uid == uid))
            return int(result.rowcount or 0)

    async def absorb(
        self, uid: str, profile_id: str, embedding: NDArray[np.float32] | tuple[float, ...], seconds: float
    ) -> SpeakerProfile:
        """Improve a profile with more of that person's speech.

        The profile's own weight is capped at ``MAX_WEIGHT_S`` seconds, so it keeps adapting to
        new rooms and microphones however much speech it has seen.

        Raises:
            NotFoundError: no such profile for ``uid``.
            ValueError: a bad embedding or seconds.
        """
        vector = _unit(embedding)
        seconds = _check_seconds(seconds)

        async def work(session: AsyncSession) -> SpeakerProfile:
            row = await self._row(session, uid, profile_id)
            weight = min(row.seconds, MAX_WEIGHT_S)
            row.embedding = _to_bytes(_blend(_embedding(row), weight, vector, min(seconds, MAX_WEIGHT_S)))
            row.seconds += seconds
            _touch(row)
            return _from_row(row)

        return await self._write(work)

    async def match(
        self, uid: str, embedding: NDArray[np.float32] | tuple[float, ...], threshold: float
    ) -> tuple[SpeakerProfile, float] | None:
        """The user's profile most similar to ``embedding`` and its cosine similarity, if at least ``threshold``."""
        vector = _unit(embedding)
        profiles = [p for p in await self.list(uid) if p.has_voice]
        if not profiles:
            return None
        similarities = np.stack([p.embedding for p in profiles]) @ vector  # (n_profiles,)
        best = int(np.argmax(similarities))
        score = float(similarities[best])
        return (profiles[best], score) if score >= threshold else None

    @staticmethod
    async def _rows(session: AsyncSession, uid: str) -> builtins.list[SpeakerProfileRow]:
        result = await session.scalars(select(SpeakerProfileRow).where(SpeakerProfileRow.uid == uid))
        return builtins.list(result.all())

    @staticmethod
    async def _row(session: AsyncSession, uid: str, profile_id: str) -> SpeakerProfileRow:
        row = await session.get(SpeakerProfileRow, profile_id)
        if row is None or row.uid != uid:
            raise NotFoundError(f"speaker {profile_id} not found")
        return row
