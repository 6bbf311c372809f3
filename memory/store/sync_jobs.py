"""Sync jobs: uploads of the OMI device's offline recordings, kept so that each is processed once.

A job is created by :meth:`SyncJobStore.claim`, which finds the job of the same user and content
instead when there is one (a unique index makes two uploads of the same files one job, even from
two workers at once). Its counters move as its pieces of speech are stored; a job that is not
finished when the service stops is taken up again at the next start.
"""

from __future__ import annotations

import builtins
import time
import uuid
from typing import Any

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from memory.store.models import SyncJobRow

__all__ = ["FINISHED", "SYNC_DIR", "SyncFile", "SyncJob", "SyncJobStore"]

SYNC_DIR = "sync"
"""The folder of ``DATA_DIR`` where uploads wait, encrypted (:class:`memory.store.sealed_files.SealedFiles`)."""
FINISHED = ("completed", "partial_failure", "failed")
"""Statuses of a job that runs no more."""


class SyncFile(msgspec.Struct, frozen=True, kw_only=True):
    """One uploaded file of a job (its audio lies apart, encrypted)."""

    name: str
    size: int
    sha256: str
    started_at: float


class SyncJob(msgspec.Struct, kw_only=True):
    """A job as stored (times in epoch seconds)."""

    id: str
    uid: str
    content_id: str
    status: str
    language: str
    files: list[SyncFile]
    total_segments: int = 0
    processed_segments: int = 0
    successful_segments: int = 0
    failed_segments: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: float
    updated_at: float
    completed_at: float | None = None
    audio_deleted_at: float | None = None

    @property
    def finished(self) -> bool:
        """Whether the job runs no more."""
        return self.status in FINISHED


def _job(row: SyncJobRow) -> SyncJob:
    return SyncJob(
        id=row.id,
        uid=row.uid,
        content_id=row.content_id,
        status=row.status,
        language=row.language,
        files=msgspec.convert(row.files, list[SyncFile]),
        total_segments=row.total_segments,
        processed_segments=row.processed_segments,
        successful_segments=row.successful_segments,
        failed_segments=row.failed_segments,
        result=row.result,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        completed_at=row.completed_at,
        audio_deleted_at=row.audio_deleted_at,
    )


class SyncJobStore:
    """Sync jobs over the conversation store's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def claim(self, uid: str, content_id: str, files: list[SyncFile], *, language: str) -> tuple[SyncJob, bool]:
        """A new queued job for these files, or the job that already holds them; whether it is new."""
        now = time.time()
        row = SyncJobRow(
            id=str(uuid.uuid4()),
            uid=uid,
            content_id=content_id,
            status="queued",
            language=language,
            files=[msgspec.to_builtins(f) for f in files],
            total_files=len(files),
            total_segments=0,
            processed_segments=0,
            successful_segments=0,
            failed_segments=0,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._sessions() as session, session.begin():
                session.add(row)
            return _job(row), True
        except IntegrityError:
            found = await self.find(uid, content_id)
            if found is None:  # deleted in between: try once more
                return await self.claim(uid, content_id, files, language=language)
            return found, False

    async def find(self, uid: str, content_id: str) -> SyncJob | None:
        """The user's job of this content, if any."""
        async with self._sessions() as session:
            row = await session.scalar(
                select(SyncJobRow).where(SyncJobRow.uid == uid, SyncJobRow.content_id == content_id)
            )
            return _job(row) if row else None

    async def get(self, job_id: str) -> SyncJob | None:
        """A job by id (of any user: the caller checks whose it is)."""
        async with self._sessions() as session:
            row = await session.get(SyncJobRow, job_id)
            return _job(row) if row else None

    async def update(self, job_id: str, **fields: Any) -> None:
        """Set fields of a job, and its ``updated_at``."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(SyncJobRow).where(SyncJobRow.id == job_id).values(**fields, updated_at=time.time())
            )

    async def unfinished(self) -> builtins.list[SyncJob]:
        """Jobs still to run (queued, or interrupted while processing), oldest first."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(SyncJobRow).where(SyncJobRow.status.not_in(FINISHED)).order_by(SyncJobRow.created_at)
            )
            return [_job(r) for r in rows.all()]

    async def holding_audio(self) -> builtins.list[SyncJob]:
        """Finished jobs whose audio is still kept."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(SyncJobRow).where(SyncJobRow.status.in_(FINISHED), SyncJobRow.audio_deleted_at.is_(None))
            )
            return [_job(r) for r in rows.all()]

    async def delete_all(self, uid: str) -> builtins.list[str]:
        """Forget every job of the user; returns their content ids (their audio is the caller's to delete)."""
        async with self._sessions() as session, session.begin():
            ids = list(await session.scalars(select(SyncJobRow.content_id).where(SyncJobRow.uid == uid)))
            await session.execute(delete(SyncJobRow).where(SyncJobRow.uid == uid))
            return ids
