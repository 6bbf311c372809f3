"""Offline recordings the OMI app uploads (``sync-local-files``): stored first, processed once, in the background.

:meth:`SyncRunner.submit` checks each file (its name, codec, frames and size: a bad file is
refused by name, the others go on), keys the upload by the user and the files' names and
contents, writes the files encrypted under ``DATA_DIR/sync/<content id>/`` and only then makes
or finds the job. The same upload again finds the same job and adds nothing. A few workers
(``SYNC_WORKERS``) take queued jobs; a job interrupted by a restart or a kill is taken up again
at the next start, from the piece of speech where it stopped.

A job decodes its files, joins those that follow each other into recordings, and cuts each
recording into pieces of speech (speech less than ``SYNC_MERGE_GAP_S`` apart is one piece). Each
piece is heard like any recording (:func:`app.service.recorded.hear`: voice activity,
speech-to-text, diarization, voice profiles) and placed where it was said
(:meth:`memory.store.conversations.ConversationManager.place`): into the conversation it overlaps
or lies nearest to within ``CONVERSATION_TIMEOUT_S``, or as a new one at the recording's own time.
Its segments have ids derived from the upload and the piece, so a piece heard twice (after a
kill) updates itself and adds nothing; the outbox takes every turn to Letta and the index once.
Transcription waits while a live stream is being transcribed, so live streams keep their pace.

The audio is deleted once its conversations have reached every sink, or ``SYNC_KEEP_AUDIO_DAYS``
after the job ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from app.service.pipeline import vad_params
from app.service.recorded import hear
from core.errors import DecodeError, UnsupportedAudioError
from ingest.offline import DecodedFile, OfflineFile, decode_file, parse_name, recordings, speech_pieces
from ingest.schema import SAMPLE_RATE
from memory.store.crypto import installed
from memory.store.sealed_files import SealedFiles
from memory.store.sync_jobs import SYNC_DIR, SyncFile, SyncJob, SyncJobStore

if TYPE_CHECKING:
    from app.service.pipeline import Pipeline
    from app.service.storage import Storage
    from app.settings import Settings
    from memory.store.conversations import ConversationManager
    from memory.store.outbox import Outbox

__all__ = ["Rejected", "Submission", "SyncRunner"]

log = logging.getLogger(__name__)

MIN_PIECE_S = 1.0  # shorter speech is dropped, as the OMI backend does
MAX_ERRORS = 10
LIVE_WAIT_S = 2.0  # the longest one window of transcription waits for live streams
CLEANUP_EVERY_S = 10.0
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "omi-letta:sync")


@dataclass(frozen=True)
class Rejected:
    """A file of an upload that cannot be used, and why (the reason names the file)."""

    name: str
    detail: str
    too_large: bool = False


@dataclass
class Submission:
    """An upload as accepted: its job (None when no file was usable), whether the job is new, and what was refused."""

    job: SyncJob | None
    new: bool
    rejected: list[Rejected] = field(default_factory=list)


def _segment_id(content_id: str, piece: int, n: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{content_id}:{piece}:{n}"))


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class SyncRunner:
    """Takes uploads and works through their jobs (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        storage: Storage,
        conversations: ConversationManager,
        outbox: Outbox | None,
    ) -> None:
        self.service_settings = settings
        self.settings = settings.sync
        self.pipeline = pipeline
        self.storage = storage
        self.conversations = conversations
        self.outbox = outbox
        self.jobs = SyncJobStore(storage.store.engine)
        self.files = SealedFiles(settings.server.data_dir / SYNC_DIR)
        # The sync's own threads, at a lower priority than live streams: they use what the CPU has spare.
        self._pool = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="sync", initializer=_lower_priority)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._done: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # --- taking uploads ----------------------------------------------------------------------

    def check(self, name: str, body: bytes) -> DecodedFile:
        """Decode one uploaded file (blocking).

        Raises:
            UnsupportedAudioError: its name or codec is not one we take.
            DecodeError: its frames are cut short or impossible, or it holds too much audio.
        """
        return decode_file(parse_name(name), body, max_seconds=self.settings.max_file_s)

    async def submit(self, uid: str, uploads: list[tuple[str, bytes]], *, language: str = "en") -> Submission:
        """Check, store and queue an upload (see the module docstring).

        Returns the job, or the one that already holds the same files, and the files refused.
        """
        rejected: list[Rejected] = []
        accepted: list[tuple[OfflineFile, bytes]] = []
        names = [name for name, _ in uploads]
        for name, body in uploads:
            if names.count(name) > 1 and any(a.name == name for a, _ in accepted):
                rejected.append(Rejected(name, f"{name}: sent twice in one upload"))
                continue
            try:
                decoded = await asyncio.to_thread(self.check, name, body)
            except (UnsupportedAudioError, DecodeError) as exc:
                rejected.append(Rejected(name, exc.detail, too_large="more than" in exc.detail))
                continue
            accepted.append((decoded.file, body))
        if not accepted:
            return Submission(None, False, rejected)
        content_id = self._content_id(uid, [(f.name, body) for f, body in accepted])
        for offline, body in accepted:  # on disk before the job exists: a crash in between loses nothing
            await asyncio.to_thread(self.files.write, f"{content_id}/{offline.name}", body)
        files = [
            SyncFile(name=f.name, size=len(body), sha256=hashlib.sha256(body).hexdigest(), started_at=f.started_at)
            for f, body in accepted
        ]
        job, new = await self.jobs.claim(uid, content_id, files, language=language)
        if new or not job.finished:
            self.enqueue(job.id)
        elif job.audio_deleted_at is not None:
            await asyncio.to_thread(self.files.remove, content_id)  # processed long ago: keep nothing again
        log.info(
            "sync: %s upload of %d file(s), job %s (%s)", "new" if new else "repeated", len(files), job.id, job.status
        )
        return Submission(job, new, rejected)

    def _content_id(self, uid: str, files: list[tuple[str, bytes]]) -> str:
        """A key of the user and the files' names and contents, in any order (an HMAC: it reveals neither)."""
        canonical = "\n".join(sorted(f"{name}:{hashlib.sha256(body).hexdigest()}" for name, body in files))
        secret = installed().derive(b"omi-letta sync content")
        return hmac.new(secret, f"{uid}\n{canonical}".encode(), hashlib.sha256).hexdigest()[:64]

    def enqueue(self, job_id: str) -> None:
        """Queue a job for the workers (once)."""
        if job_id not in self._done:
            self._done[job_id] = asyncio.Event()
            self._queue.put_nowait(job_id)

    async def wait(self, job_id: str, timeout_s: float | None = None) -> SyncJob | None:
        """The job once it has finished (or as it stands after ``timeout_s``)."""
        event = self._done.get(job_id)
        if event is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout_s)
        return await self.jobs.get(job_id)

    # --- running -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take up the jobs a stop interrupted, and start the workers and the audio clean-up."""
        for job in await self.jobs.unfinished():
            if any(self.files.path(f"{job.content_id}/{f.name}").is_file() for f in job.files):
                self.enqueue(job.id)
            else:  # another worker's upload (its DATA_DIR holds the audio)
                log.info("sync: job %s has no audio here; left to the worker that took it", job.id)
        self._tasks = [asyncio.create_task(self._work(), name=f"sync-worker-{i}") for i in range(self.settings.workers)]
        self._tasks.append(asyncio.create_task(self._clean_forever(), name="sync-cleanup"))

    async def stop(self) -> None:
        """Stop the workers; an unfinished job stays queued in the database and resumes at the next start."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                await self.run(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sync: job %s failed", job_id)
                await self.jobs.update(job_id, status="failed", error="the service failed processing it; see its log")
            finally:
                self._done[job_id].set()

    async def run(self, job_id: str) -> SyncJob | None:
        """Work through one job, from where it stopped; returns it as it ended."""
        job = await self.jobs.get(job_id)
        if job is None or job.finished:
            return job
        await self.jobs.update(job.id, status="processing")
        loop = asyncio.get_running_loop()
        decoded = await loop.run_in_executor(self._pool, self._decode, job)
        pieces = []
        for recording in recordings(decoded, join_gap_s=self.settings.merge_gap_s):
            cut = functools.partial(
                speech_pieces,
                recording.audio,
                self.pipeline.vad,
                vad_params(self.service_settings.stream),
                merge_gap_s=self.settings.merge_gap_s,
                min_s=MIN_PIECE_S,
            )
            found = await loop.run_in_executor(self._pool, cut)
            pieces += [(recording, start, end) for start, end in found]
        result: dict[str, Any] = dict(job.result or {"new_memories": [], "updated_memories": [], "errors": []})
        errors: list[str] = list(result.get("errors") or [])
        failed = job.failed_segments
        await self.jobs.update(job.id, total_segments=len(pieces))
        for i, (recording, start, end) in enumerate(pieces):
            if i < job.processed_segments:
                continue  # stored before the service stopped
            try:
                conversation_id, new = await self._piece(job, i, recording.audio, recording.started_at, start, end)
            except Exception as exc:
                failed += 1
                log.warning("sync: piece %d of job %s failed (%s)", i + 1, job.id, type(exc).__name__)
                if len(errors) < MAX_ERRORS:
                    detail = getattr(exc, "detail", None) or type(exc).__name__
                    errors.append(f"speech at {_when(recording.started_at + start)}: {detail}")
            else:
                if conversation_id is not None:
                    listed = "new_memories" if new or conversation_id in result["new_memories"] else "updated_memories"
                    if conversation_id not in result[listed]:
                        result[listed].append(conversation_id)
            result["errors"] = errors
            await self.jobs.update(
                job.id,
                processed_segments=i + 1,
                successful_segments=i + 1 - failed,
                failed_segments=failed,
                result=result,
            )
        total = len(pieces)
        status = "failed" if total and failed >= total else "partial_failure" if failed else "completed"
        result.update(failed_segments=failed, total_segments=total)
        result["updated_memories"] = [c for c in result["updated_memories"] if c not in result["new_memories"]]
        await self.jobs.update(
            job.id,
            status=status,
            result=result,
            error=f"all {total} piece(s) of speech failed; first: {errors[0]}" if status == "failed" else None,
            completed_at=time.time(),
        )
        log.info("sync: job %s %s: %d piece(s) of speech, %d failed", job.id, status, total, failed)
        return await self.jobs.get(job.id)

    def _decode(self, job: SyncJob) -> list[DecodedFile]:
        out = []
        for f in job.files:
            body = self.files.read(f"{job.content_id}/{f.name}")
            out.append(decode_file(parse_name(f.name, now=job.created_at), body, max_seconds=self.settings.max_file_s))
        return out

    async def _piece(
        self, job: SyncJob, index: int, audio: Any, started_at: float, start: float, end: float
    ) -> tuple[str | None, bool]:
        """Hear one piece of speech and place it; its conversation's id (None: no words) and whether it is new."""
        a, b = round(start * SAMPLE_RATE), round(end * SAMPLE_RATE)
        heard = await hear(
            self.pipeline,
            self.service_settings,
            self.storage.speakers,
            audio[a:b],
            uid=job.uid,
            origin=started_at + start,
            language=job.language,
            ids=lambda n: _segment_id(job.content_id, index, n),
            gate=self._let_live_go_first,
            executor=self._pool,
        )
        if not heard.segments:
            return None, False
        conversation, new = await self.conversations.place(
            job.uid,
            heard.segments,
            source="omi",
            language=job.language,
            window_s=self.service_settings.conversation.default_timeout_s,
        )
        return conversation.id, new

    def _let_live_go_first(self) -> None:
        """Wait (in the transcription thread) while a live stream is being transcribed, at most LIVE_WAIT_S."""
        transcriber = self.pipeline.transcriber
        deadline = time.monotonic() + LIVE_WAIT_S
        while transcriber.busy and time.monotonic() < deadline:
            time.sleep(0.02)

    # --- the audio's end -----------------------------------------------------------------------

    async def clean(self, now: float | None = None) -> int:
        """Delete the audio of finished jobs that need it no more; returns how many jobs it was."""
        stamp = time.time() if now is None else now
        keep_s = self.settings.keep_audio_days * 86_400.0
        outbox = self.outbox
        cleaned = 0
        for job in await self.jobs.holding_audio():
            if keep_s > 0:
                due = (job.completed_at or job.updated_at) + keep_s <= stamp
            else:
                conversations = [
                    *(job.result or {}).get("new_memories", []),
                    *(job.result or {}).get("updated_memories", []),
                ]
                due = outbox is None or await outbox.undelivered(job.uid, conversations) == 0
            if due:
                await asyncio.to_thread(self.files.remove, job.content_id)
                await self.jobs.update(job.id, audio_deleted_at=stamp)
                cleaned += 1
        return cleaned

    async def erase(self, uid: str) -> int:
        """Forget every job of the user and delete their audio; returns how many jobs."""
        content_ids = await self.jobs.delete_all(uid)
        for content_id in content_ids:
            await asyncio.to_thread(self.files.remove, content_id)
        return len(content_ids)

    async def _clean_forever(self) -> None:
        while True:
            try:
                await self.clean()
            except Exception:
                log.exception("sync: cleaning up audio failed; retrying")
            await asyncio.sleep(CLEANUP_EVERY_S)


def _lower_priority() -> None:
    """Run this thread (and the threads it starts) at a lower CPU priority: nice 10 (Linux, where a thread has
    a priority of its own; elsewhere the whole process would be lowered, so nothing changes)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
