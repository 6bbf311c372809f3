"""What every route is given: the services built at startup and the caller's uid."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from litestar import Request
from litestar.exceptions import NotAuthorizedException

from app.http.http_audit import note_uid
from app.service.auth import AuthError, authenticate
from app.service.services import Services

if TYPE_CHECKING:
    pass


__all__ = ["MAX_OFFSET", "provide_services", "provide_uid"]

log = logging.getLogger(__name__)


MAX_OFFSET = 2**31 - 1  # far past any list; a larger one would not fit the database's integer


def provide_services(request: Request[Any, Any, Any]) -> Services:
    """The services built at startup."""
    services: Services = request.app.state.services
    return services


async def provide_uid(request: Request[Any, Any, Any], services: Services) -> str:
    """The caller's uid (see :func:`authenticate`); 401 otherwise."""
    try:
        uid = await authenticate(request.headers.get("authorization"), services)
    except AuthError as exc:
        raise NotAuthorizedException(detail=str(exc)) from exc
    note_uid(request.scope, uid)
    return uid
