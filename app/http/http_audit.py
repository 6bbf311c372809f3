"""Audit entries for HTTP calls: every call that authenticated a user, and every call refused with 401.

:func:`audit_response` is a ``before_send`` hook of the app: it sees the status of every
response, including those made from exceptions. The uid comes from the scope, where the
authentication dependencies leave it (:func:`note_uid`); the action comes from the method and
the route template, the conversation from the path parameters. Calls that authenticate no one
(health, metrics, the web page, the docs) are not audited; nor are MCP requests one by one (each
tool call is, by :mod:`app.http.memory_mcp`), nor ``/v1/embeddings``, which reads nothing stored.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from litestar.types import Message, Scope

__all__ = ["action_for", "audit_response", "client_of", "note_uid"]

log = logging.getLogger(__name__)

_UID = "audit_uid"

ROUTE_ACTIONS: dict[tuple[str, str], str | None] = {
    ("POST", "/v1/chat"): "chat",
    ("GET", "/v1/live"): "read",  # the live transcript
    ("GET", "/v1/memory/search"): "search",
    ("DELETE", "/v1/users/me/data"): "erase",
    ("POST", "/v1/embeddings"): None,  # the service's embedding model, for Letta: nothing stored is read
}
"""Routes whose action is not what their method says, or ``None`` for routes that are not audited."""


def note_uid(scope: Scope | dict[str, Any], uid: str) -> None:
    """Remember who a request authenticated as, for its audit entry."""
    scope.setdefault("state", {})[_UID] = uid


def action_for(method: str, template: str) -> str | None:
    """The audit action of a call: ``read`` or ``list`` for GET (one item or many), ``delete``, else ``change``."""
    if (method, template) in ROUTE_ACTIONS:
        return ROUTE_ACTIONS[method, template]
    if method in ("GET", "HEAD"):
        return "read" if template.endswith("}") else "list"
    return "delete" if method == "DELETE" else "change"


def client_of(scope: Scope | dict[str, Any]) -> str:
    """The remote address of a connection (as the server saw it, after any trusted proxy headers)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def _template(scope: Scope) -> str:
    handler = scope.get("route_handler")
    if getattr(handler, "is_mount", False):  # a mounted app: its mount path (the router gives no template)
        return str(next(iter(handler.paths), "")) if handler is not None else ""
    return str(scope.get("path_template") or scope.get("path", ""))


async def audit_response(message: Message, scope: Scope) -> None:
    """Record the call whose response starts with ``message`` (never raises: a response is never held up)."""
    if message["type"] != "http.response.start":
        return
    try:
        status = int(message["status"])
        uid = scope.get("state", {}).get(_UID)
        if uid is None and status != 401:
            return
        services = getattr(scope["app"].state, "services", None)
        audit = getattr(getattr(services, "storage", None), "audit", None)
        if audit is None:
            return
        method = str(scope.get("method", ""))
        template = _template(scope)
        action = "auth-failure" if status == 401 else action_for(method, template)
        if action is None or (action != "auth-failure" and getattr(scope.get("route_handler"), "is_mount", False)):
            return
        audit.record(
            uid="" if status == 401 else str(uid),
            action=action,
            route=f"{method} {template}",
            client=client_of(scope),
            status=status,
            conversation_id=scope.get("path_params", {}).get("conversation_id"),
        )
    except Exception:
        log.exception("could not audit a response")
