"""The service's own routes: health, metrics, the live transcript, and erasing all of one's data."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, delete, get
from litestar.exceptions import NotAuthorizedException, ServiceUnavailableException
from litestar.response import ServerSentEvent, ServerSentEventMessage

from app.service.auth import AuthError, check_operator
from app.service.live_hub import LiveHub
from app.service.services import Services

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


__all__ = ["erase_my_data", "health", "live", "metrics"]

log = logging.getLogger(__name__)


@get("/health", tags=["service"], summary="Liveness, what is loaded, and the checks that alert")
async def health(services: Services) -> dict[str, Any]:
    """Whether the service is up (``status`` is always ``ok`` and the status 200 while it serves), with its
    speech-to-text engine and database, and the checks that raise alerts: ``healthy`` is false while one
    fails, and ``checks`` holds each (``letta``, ``delivery_backlog``, ``dead_letters``, ``disk``,
    ``backup``, ``speech_to_text``, ``device_silence``) with ``ok``, ``detail`` and ``since``, as of
    ``checked_at`` (every ALERT_CHECK_INTERVAL_S). A failing check does not change the status code: a
    balancer should keep a worker that serves, even with Letta away or the disk filling."""
    monitor = services.health
    checked = monitor.checked_at
    return {
        "status": "ok",
        "healthy": monitor.healthy,
        "checked_at": None if checked is None else datetime.fromtimestamp(checked, UTC).isoformat(timespec="seconds"),
        "checks": monitor.report(),
        "stt": services.pipeline.streaming.name
        if services.pipeline.streaming is not None
        else services.pipeline.transcriber.asr.name,
        "database": services.storage.store.dialect,
        "streams_active": int(services.metrics.gauges.get("streams_active", 0)),
        "delivery": {
            "sinks": list(services.storage.store.sinks),
            "here": services.outbound.lock is not None,
            "letta": services.settings.letta.url if "letta" in services.storage.store.sinks else None,
        },
    }


@get("/metrics", tags=["service"], summary="Prometheus metrics", media_type="text/plain")
async def metrics(request: Request[Any, Any, Any], services: Services) -> str:
    """Counters and latency quantiles in the Prometheus text format.

    The bearer token must be ``ADMIN_KEY`` or ``METRICS_TOKEN`` itself (not a user's token); 401 otherwise.
    """
    try:
        check_operator(request.headers.get("authorization"), services.settings.auth)
    except AuthError as exc:
        raise NotAuthorizedException(detail=str(exc)) from exc
    return services.metrics.render()


LIVE_PING_S = 15.0


@get("/v1/live", tags=["conversations"], summary="Your live transcript, as server-sent events")
async def live(services: Services, uid: str) -> ServerSentEvent:
    """The caller's in-progress conversation as it is heard, for a web page.

    A ``ready`` event says the stream is listening. Then ``segments`` events carry lists of OMI
    segments exactly as the device receives them (re-sent with the same ``id`` as they grow),
    ``relabel`` events lists of stored segments whose speaker changed (in any of the caller's
    conversations), and ``conversation`` events the OMI conversation events
    (``memory_processing_started``, ``memory_created``). A comment line every 15 s keeps the
    connection open. A client that falls far behind is disconnected: reconnect, and reload the
    in-progress conversation.
    """
    return ServerSentEvent(_live_events(services.live, uid))


async def _live_events(hub: LiveHub, uid: str) -> AsyncIterator[ServerSentEventMessage]:
    async with hub.subscribe(uid) as events:
        yield ServerSentEventMessage(event="ready", data="{}")
        while True:
            try:
                async with asyncio.timeout(LIVE_PING_S):
                    event = await events.get()
            except TimeoutError:
                yield ServerSentEventMessage(data=None, comment="ping")
                continue
            if event is None:
                return
            yield ServerSentEventMessage(event=event.kind, data=msgspec.json.encode(event.data).decode())


@delete("/v1/users/me/data", tags=["users"], summary="Erase all your data", status_code=202)
async def erase_my_data(services: Services, uid: str) -> dict[str, Any]:
    """Erase everything of the caller's: every conversation with its turns, voice profiles, API tokens
    (the one in use too), day summaries, and the conversation in progress with its live state.

    The database forgets at once. The memory index and the Letta agent's passages and
    ``recent_conversations`` block follow through the outbox, exactly once and after anything queued
    before: ``deliveries_queued`` records, whose draining ``/metrics`` shows (``outbox_pending_*``).
    The agent itself stays. A device still streaming starts a new conversation.
    """
    if services.retention is None:
        raise ServiceUnavailableException(detail="erasing is not available in this process")
    erased = await services.retention.erase(uid)
    return {**erased.counts(), "sinks": list(services.storage.store.sinks)}
