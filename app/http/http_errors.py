"""Domain errors as HTTP responses: the one place they are mapped."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from litestar import Request
from litestar.response import Response

from app.http.body_limits import describe_size
from core.errors import (
    ConflictError,
    NotFoundError,
    StorageError,
)

if TYPE_CHECKING:
    pass


__all__ = ["conflict", "memory_unavailable", "not_found", "storage_full", "too_large"]

log = logging.getLogger(__name__)


def not_found(request: Request[Any, Any, Any], exc: NotFoundError) -> Response[dict[str, Any]]:
    """Map :class:`NotFoundError` to 404, the one place domain errors become HTTP."""
    return Response({"status_code": 404, "detail": exc.detail}, status_code=404)


def too_large(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """413 that says how large a request body this route accepts."""
    limit = request.route_handler.resolve_request_max_body_size()
    detail = f"the request body is larger than the {describe_size(limit)} this route accepts" if limit else str(exc)
    return Response({"status_code": 413, "detail": detail}, status_code=413)


def conflict(request: Request[Any, Any, Any], exc: ConflictError) -> Response[dict[str, Any]]:
    """Map :class:`ConflictError` to 409."""
    return Response({"status_code": 409, "detail": exc.detail}, status_code=409)


def memory_unavailable(request: Request[Any, Any, Any], exc: StorageError) -> Response[dict[str, Any]]:
    """Map an embedding or vector index failure to 503."""
    return Response({"status_code": 503, "detail": exc.detail}, status_code=503)


def storage_full(request: Request[Any, Any, Any], exc: StorageError) -> Response[dict[str, Any]]:
    """Map a full disk to 507 Insufficient Storage: nothing was changed, and retrying helps once space is freed."""
    log.error("a request could not be stored: %s", exc.detail)
    return Response({"status_code": 507, "detail": exc.detail}, status_code=507)
