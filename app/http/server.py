"""The composition root: the one place that wires routes, services, lifecycle and error mapping."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from litestar import Litestar, asgi
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from app import __version__
from app.http.app_chat import AppChatController
from app.http.body_limits import limit_body
from app.http.chat_routes import ChatController
from app.http.conversation_edits import ConversationEditController
from app.http.conversation_routes import ConversationController
from app.http.deps import provide_services, provide_uid
from app.http.http_audit import audit_response
from app.http.http_errors import conflict, memory_unavailable, not_found, storage_full, too_large
from app.http.listen import listen
from app.http.memories_routes import MemoriesController
from app.http.memory_mcp import MemoryMcp
from app.http.memory_routes import EmbeddingsController, MemoryController
from app.http.page import API_DOCS, api_docs, page, page_asset
from app.http.people_routes import PeopleController, SpeechProfileController
from app.http.security import cors_config, security_headers
from app.http.speaker_routes import SpeakerController
from app.http.status_routes import erase_my_data, health, live, metrics
from app.http.sync_routes import sync_routes
from app.http.user_routes import UserController
from app.http.webhooks import OmiWebhookController
from app.service.services import Services, check_can_serve
from app.settings import Settings, get_settings
from core.errors import ConflictError, EmbeddingError, NotFoundError, StorageFullError, VectorIndexError

if TYPE_CHECKING:
    from litestar.types import Receive, Scope, Send

    from ingest.asr.stt import SpeechToText
    from ingest.diarize.diarizer import Diarizer

__all__ = ["create_app"]


def configure_logging(level: str) -> None:
    """Plain, timestamped logs. Transcript text and audio are never logged."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(level)))  # a line per request


class _NoQueryStrings(logging.Filter):
    """Drops the query string from access log lines: it may hold what was said (``/v1/memory/search?q=``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
        return True


def hide_query_strings() -> None:
    """Keep query strings out of the server's access log (the server has configured its loggers by now)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _NoQueryStrings) for f in access.filters):
        access.addFilter(_NoQueryStrings())


def create_app(
    settings: Settings | None = None, *, asr: SpeechToText | None = None, diarizer: Diarizer | None = None
) -> Litestar:
    """Build the ASGI app. Models and the database open in the lifespan, once."""
    settings = settings or get_settings()

    started: list[Services] = []
    memory_mcp = MemoryMcp(lambda: started[0])

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        check_can_serve(settings)
        hide_query_strings()
        services = await Services.start(settings, asr=asr, diarizer=diarizer)
        app.state.services = services
        started.append(services)
        try:
            async with memory_mcp.session_manager():
                yield
        finally:
            await services.stop()

    # A mounted app reads its own body: the limit of every other route is applied here.
    mcp_app = limit_body(memory_mcp, settings.server.max_body_bytes)  # type: ignore[arg-type]

    @asgi("/mcp", is_mount=True)
    async def mcp(scope: Scope, receive: Receive, send: Send) -> None:
        """MCP (streamable HTTP): the memory's tools, scoped to the bearer token's user."""
        await mcp_app(scope, receive, send)

    return Litestar(
        route_handlers=[
            listen,
            health,
            metrics,
            live,
            erase_my_data,
            ConversationController,
            ConversationEditController,
            SpeakerController,
            SpeechProfileController,
            PeopleController,
            UserController,
            AppChatController,
            MemoriesController,
            MemoryController,
            EmbeddingsController,
            ChatController,
            OmiWebhookController,
            *sync_routes(settings.sync),
            mcp,
            page,
            page_asset,
            api_docs,
        ],
        dependencies={
            "services": Provide(provide_services, sync_to_thread=False),
            "uid": Provide(provide_uid),
        },
        lifespan=[lifespan],
        # Both see every response, those made from exceptions and by mounted apps too.
        before_send=[audit_response, security_headers(settings.server)],
        cors_config=cors_config(settings.server),
        request_max_body_size=settings.server.max_body_bytes,
        exception_handlers={
            NotFoundError: not_found,
            ConflictError: conflict,
            EmbeddingError: memory_unavailable,
            VectorIndexError: memory_unavailable,
            StorageFullError: storage_full,
            413: too_large,
        },
        openapi_config=OpenAPIConfig(
            title="omi-letta",
            version=__version__,
            description="OMI-compatible ingest of live audio into stored, speaker-attributed conversations.",
            path="/schema",  # the JSON at /schema/openapi.json; `/` is the web page
            render_plugins=list(API_DOCS.values()),
        ),
    )
