"""Domain errors as HTTP responses: the one place they are mapped."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request
from litestar.response import Response

from app.http.body_limits import describe_size
from core.errors import ConflictError, NotFoundError, StorageError

__all__ = ["conflict", "error_body", "memory_unavailable", "not_found", "storage_full", "too_large"]

log = logging.getLogger(__name__)


def error_body(status: int, detail: str) -> dict[str, Any]:
    """The body of an error response, as Litestar's own errors read: ``{status_code, detail}``."""
    return {"status_code": status, "detail": detail}


def _error(status: int, detail: str) -> Response[dict[str, Any]]:
    return Response(error_body(status, detail), status_code=status)


def not_found(request: Request[Any, Any, Any], exc: NotFoundError) -> Response[dict[str, Any]]:
    """Map :class:`NotFoundError` to 404, the one place domain errors become HTTP."""
    return _error(404, exc.detail)


def too_large(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """413 that says how large a request body this route accepts."""
    limit = request.route_handler.resolve_request_max_body_size()
    detail = f"the request body is larger than the {describe_size(limit)} this route accepts" if limit else str(exc)
    return _error(413, detail)


def conflict(request: Request[Any, Any, Any], exc: ConflictError) -> Response[dict[str, Any]]:
    """Map :class:`ConflictError` to 409."""
    return _error(409, exc.detail)


def memory_unavailable(request: Request[Any, Any, Any], exc: StorageError) -> Response[dict[str, Any]]:
    """Map an embedding or vector index failure to 503."""
    return _error(503, exc.detail)


def storage_full(request: Request[Any, Any, Any], exc: StorageError) -> Response[dict[str, Any]]:
    """Map a full disk to 507 Insufficient Storage: nothing was changed, and retrying helps once space is freed."""
    log.error("a request could not be stored: %s", exc.detail)
    return _error(507, exc.detail)
