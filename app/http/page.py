"""What the service shows a browser: the web page at ``/`` (plain files in ``app/web``) and the API docs.

The page is four files, packaged with the code and served as they are: no build step. It calls
the same HTTP API as any client, with the user's bearer token.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from litestar import Request, get
from litestar.enums import MediaType
from litestar.openapi.plugins import OpenAPIRenderPlugin, RedocRenderPlugin, SwaggerRenderPlugin
from litestar.response import Response

__all__ = ["API_DOCS", "api_docs", "page", "page_asset"]

WEB = resources.files("app.http") / "web"
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "page_util.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

# The page loads nothing from elsewhere, and nothing may frame it.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

API_DOCS: dict[str, OpenAPIRenderPlugin] = {
    "/docs": SwaggerRenderPlugin(path="/docs"),
    "/redoc": RedocRenderPlugin(path="/redoc"),
}
"""The render plugins of the OpenAPI config (under ``/schema``), also served at the root paths."""


@get("/", media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False)
def page() -> Response[bytes]:
    """The web page: sign in, live transcript, conversations, search and chat."""
    return Response((WEB / "index.html").read_bytes(), media_type=MediaType.HTML, headers=PAGE_HEADERS)


@get("/web/{name:str}", include_in_schema=False, sync_to_thread=False)
def page_asset(name: str) -> Response[bytes]:
    """The page's script and style sheet."""
    if name not in ASSETS:
        return Response(b"not found", status_code=404, media_type=MediaType.TEXT)
    return Response((WEB / name).read_bytes(), media_type=ASSETS[name], headers=PAGE_HEADERS)


@get(list(API_DOCS), media_type=MediaType.HTML, include_in_schema=False, sync_to_thread=False)
def api_docs(request: Request[Any, Any, Any]) -> bytes:
    """Swagger UI at ``/docs`` and Redoc at ``/redoc``, reading the schema at ``/schema/openapi.json``."""
    return API_DOCS[request.url.path.rstrip("/")].render(request, request.app.openapi_schema.to_schema())
