"""What every HTTP response says to browsers: security headers, and which other origins may call the API (CORS)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar.config.cors import CORSConfig
from litestar.datastructures import MutableScopeHeaders

if TYPE_CHECKING:
    from litestar.types import BeforeMessageSendHookHandler, Message, Scope

    from app.settings import ServerSettings

__all__ = ["SECURITY_HEADERS", "cors_config", "security_headers"]

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Responses that bring their own policy (the web page) keep it; others may not be framed either.
    "Content-Security-Policy": "frame-ancestors 'none'",
    # API responses carry the user's data: no browser or proxy may keep them. The page and its
    # assets set their own (`no-cache`).
    "Cache-Control": "no-store",
}
"""Headers added to every HTTP response that does not set its own."""


def cors_config(settings: ServerSettings) -> CORSConfig | None:
    """CORS for the origins of CORS_ORIGINS; None (no cross-origin access at all) when it is empty.

    Browsers on those origins may send the bearer token in ``Authorization``; no cookies are used.
    """
    origins = settings.cors_origin_list
    if not origins:
        return None
    return CORSConfig(
        allow_origins=list(origins),
        allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Mcp-Session-Id", "Mcp-Protocol-Version"],
        allow_credentials=False,
        max_age=600,
    )


def security_headers(settings: ServerSettings) -> BeforeMessageSendHookHandler:
    """A ``before_send`` hook adding :data:`SECURITY_HEADERS`, and HSTS when HSTS_MAX_AGE_S is set."""
    headers = dict(SECURITY_HEADERS)
    if settings.hsts_max_age_s > 0:
        headers["Strict-Transport-Security"] = f"max-age={settings.hsts_max_age_s}"

    async def add_headers(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        message.setdefault("headers", [])
        present = MutableScopeHeaders.from_message(message)
        for name, value in headers.items():
            if name not in present:
                present[name] = value

    return add_headers
