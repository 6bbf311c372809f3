"""The OMI app's offline sync: ``POST /v1/sync-local-files``, ``POST /v2/sync-local-files``, ``GET /v2/...{job_id}``.

Both versions take a multipart form with one ``files`` part per recording, named as the app names
them (:mod:`ingest.offline`). The files are on disk, encrypted, before anything is answered
(:class:`app.service.sync_runner.SyncRunner`); the same upload again is the same job.

- v1 answers when the job is done: 200 ``{new_memories, updated_memories, failed_segments,
  total_segments, errors}`` (conversation ids; the OMI app reads the first two).
- v2 answers at once: 202 ``{job_id, status, total_files, total_segments, poll_after_ms}``; then
  ``GET /v2/sync-local-files/{job_id}`` gives ``{job_id, status, total_files, total_segments,
  processed_segments, successful_segments, failed_segments}``, with ``result`` (the v1 body) once
  the job ended and ``error`` when it failed. Another user's job is 403, an unknown one 404.

A file that cannot be used (another codec, a bad name, a frame cut short, too much audio) is
refused by name with 400 (413 when it is too large): ``{detail, errors: [{file, detail}]}``,
while the other files of the upload go through, and their job is in the same body. The same
upload while its job still runs gets 409 with ``Retry-After: 10``.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, get, post
from litestar.datastructures import UploadFile
from litestar.exceptions import ServiceUnavailableException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.response import Response

from app.http.http_errors import error_body
from app.service.services import Services
from app.service.sync_runner import Submission, SyncRunner
from app.settings import SyncSettings
from core.errors import NotFoundError
from memory.store.sync_jobs import SyncJob

__all__ = ["job_view", "sync_routes"]

log = logging.getLogger(__name__)

POLL_AFTER_MS = 3000
RETRY_AFTER_S = 10
FIELD = "files"


def job_view(job: SyncJob) -> dict[str, Any]:
    """A job as ``GET /v2/sync-local-files/{job_id}`` shows it (the OMI app's ``SyncJobStatus``)."""
    view: dict[str, Any] = {
        "job_id": job.id,
        "status": job.status,
        "total_files": len(job.files),
        "total_segments": job.total_segments,
        "processed_segments": job.processed_segments,
        "successful_segments": job.successful_segments,
        "failed_segments": job.failed_segments,
    }
    if job.finished:
        view["result"] = _result(job)
    if job.error:
        view["error"] = job.error
    return view


def _result(job: SyncJob) -> dict[str, Any]:
    result = job.result or {}
    return {
        "new_memories": list(result.get("new_memories", [])),
        "updated_memories": list(result.get("updated_memories", [])),
        "failed_segments": job.failed_segments,
        "total_segments": job.total_segments,
        "errors": list(result.get("errors", [])),
    }


def _runner(services: Services) -> SyncRunner:
    if services.sync is None:
        raise ServiceUnavailableException(detail="offline sync is not available in this process")
    return services.sync


async def _uploads(request: Request[Any, Any, Any], limit: int) -> list[tuple[str, bytes]]:
    """The ``files`` parts of the form, as ``(file name, bytes)``; 400 when there are none or too many."""
    form = await request.form()
    parts = [p for p in form.getall(FIELD) if isinstance(p, UploadFile)] if FIELD in form else []
    if not parts:
        raise ValidationException(detail=f"send the recordings as multipart form parts named {FIELD!r}")
    if len(parts) > limit:
        raise ValidationException(detail=f"an upload may hold at most {limit} files, not {len(parts)}")
    return [(p.filename or "", await p.read()) for p in parts]


async def _submit(request: Request[Any, Any, Any], services: Services, uid: str) -> tuple[SyncRunner, Submission]:
    runner = _runner(services)
    uploads = await _uploads(request, services.settings.sync.max_files)
    language = request.query_params.get("language") or "en"
    return runner, await runner.submit(uid, uploads, language=language[:16])


def _refused(submission: Submission, body: dict[str, Any]) -> Response[dict[str, Any]]:
    """400 (413 if a file is too large) naming each refused file, with what became of the others."""
    rejected = submission.rejected
    status = 413 if any(r.too_large for r in rejected) else 400
    others = "; the other files were taken" if submission.job is not None else ""
    detail = f"{len(rejected)} file(s) cannot be used: " + "; ".join(r.detail for r in rejected) + others
    errors = [{"file": r.name, "detail": r.detail} for r in rejected]
    return Response({**error_body(status, detail), "errors": errors, **body}, status_code=status)


def _busy(job: SyncJob) -> Response[dict[str, Any]]:
    detail = "the same audio is already being processed; ask again shortly"
    body = {**error_body(409, detail), "code": "sync_content_in_progress", "job_id": job.id}
    return Response(body, status_code=409, headers={"Retry-After": str(RETRY_AFTER_S)})


async def _v1(request: Request[Any, Any, Any], services: Services, uid: str) -> Response[dict[str, Any]]:
    """Store and process the recordings, and answer when their conversations are stored."""
    runner, submission = await _submit(request, services, uid)
    job = submission.job
    body: dict[str, Any] = {"new_memories": [], "updated_memories": [], "failed_segments": 0, "total_segments": 0}
    if job is not None:
        if not submission.new and not job.finished:
            return _busy(job)
        finished = await runner.wait(job.id)
        if finished is not None:
            body = {**body, **_result(finished)}
    if submission.rejected:
        return _refused(submission, body)
    return Response({**body, "errors": body.get("errors", [])}, status_code=200)


async def _v2(request: Request[Any, Any, Any], services: Services, uid: str) -> Response[dict[str, Any]]:
    """Store the recordings and queue their processing; answer at once with the job."""
    _, submission = await _submit(request, services, uid)
    job = submission.job
    body: dict[str, Any] = {}
    if job is not None:
        if not submission.new and not job.finished:
            return _busy(job)
        body = {
            "job_id": job.id,
            "status": job.status,
            "total_files": len(job.files),
            "total_segments": job.total_segments,
            "poll_after_ms": 0 if job.finished else POLL_AFTER_MS,
        }
    if submission.rejected:
        return _refused(submission, body)
    return Response(body, status_code=202)


async def _job(services: Services, uid: str, job_id: str) -> Response[dict[str, Any]]:
    """How a sync job stands."""
    job = await _runner(services).jobs.get(job_id)
    if job is None:
        raise NotFoundError("Sync job not found or expired")
    if job.uid != uid:
        return Response(error_body(403, "Not authorized to view this sync job"), status_code=403)
    return Response(job_view(job), status_code=200)


def sync_routes(settings: SyncSettings) -> list[HTTPRouteHandler]:
    """The three routes, with a body limit of ``SYNC_MAX_UPLOAD_MB`` on the uploads."""
    limit = settings.max_upload_mb * 1024 * 1024
    common: dict[str, Any] = {"tags": ["offline sync"], "request_max_body_size": limit, "status_code": 200}
    return [
        post("/v1/sync-local-files", summary="Upload offline recordings and wait for their conversations", **common)(
            _v1
        ),
        post(
            "/v2/sync-local-files", summary="Upload offline recordings; they are processed in the background", **common
        )(_v2),
        get("/v2/sync-local-files/{job_id:str}", summary="How an offline sync job stands", tags=["offline sync"])(_job),
    ]
