"""The OMI cloud's developer webhooks: what the hosted OMI app hears, stored here as ours.

In the OMI app's developer settings a user points each webhook at one of these URLs, with an
API token of theirs in the query (``?key=olt_…``: the app cannot set headers). The cloud then
calls (see §3 of the OMI protocol notes):

- ``POST …/memory-created?uid=U``: a finished conversation with its summary; stored as one of
  ours (its segments, speakers and times, its ``structured`` title and overview), and queued
  for Letta and the index like every stored change.
- ``POST …/realtime-transcript?uid=U``: ``{"session_id", "segments"}`` or a bare array of
  segments; they join the user's in-progress conversation and the live transcript.
- ``POST …/audio-bytes?uid=U&sample_rate=R``: raw PCM16 mono; our own VAD, speech-to-text and
  diarization turn it into speaker-attributed turns, one stream per user across requests.
- ``POST …/day-summary?uid=U``: kept, and listed by ``GET …/day-summaries``.

Ids from the cloud are namespaced per user, so a repeated delivery updates what it delivered
before and changes nothing when it is the same. Bodies are validated whole before anything is
stored (422 names the field at fault). Transcript text and audio are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import Provide
from litestar.exceptions import NotAuthorizedException, ServiceUnavailableException
from litestar.params import Parameter

from app.http.deps import MAX_OFFSET
from app.http.http_audit import note_uid
from app.http.omi_payloads import (
    OmiConversation,
    OmiDaySummary,
    OmiRealtime,
    OmiSegment,
    decode_body,
    epoch,
    imported,
    omi_segment,
    segment_ids,
    unprocessable,
)
from app.service.auth import AuthError, authenticate
from app.service.live_hub import LiveEvent
from app.service.live_session import LiveSession
from app.service.services import Services
from core.conversation import Conversation, iso
from core.errors import SpeechToTextError, UnsupportedAudioError
from ingest.decode import PCM_RATES, make_decoder
from memory.store.day_summaries import DaySummary, DaySummaryStore
from memory.store.tokens import PREFIX as TOKEN_PREFIX

__all__ = ["OmiWebhookController", "OmiWebhooks"]

log = logging.getLogger(__name__)


MAX_CONVERSATION_BYTES = 32 * 1024 * 1024
MAX_AUDIO_BYTES = 16 * 1024 * 1024  # over 8 minutes of 16 kHz PCM16 in one request
REWIND_S = 5.0  # realtime times that go back further than this began a new conversation in the cloud
AHEAD_S = 30.0  # nor may they run this far ahead of the clock
_TOKEN_HELP = "create one with `omi-letta token create --uid <uid> --name omi-webhooks`"


# --- state kept across requests ----------------------------------------------------------------


@dataclass
class _Clock:
    """Maps a user's realtime segment times (seconds from the cloud's conversation start) to epoch seconds."""

    origin: float
    last_end: float


@dataclass
class _AudioSession:
    """One user's audio-bytes stream, continued by each request until it goes quiet."""

    live: LiveSession
    sample_rate: int
    language: str
    last_post: float  # time.monotonic()


class OmiWebhooks:
    """What the webhooks keep between requests: per-user audio streams and realtime clocks, and day summaries.

    Made on first use; :meth:`close` runs when the service stops.
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self.summaries = DaySummaryStore(services.storage.store.engine)
        self._clocks: dict[str, _Clock] = {}
        self._realtime_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._audio: dict[str, _AudioSession] = {}
        self._audio_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._reaper: asyncio.Task[None] | None = None
        self.idle_s = services.settings.stream.inactivity_timeout_s

    @classmethod
    def of(cls, request: Request[Any, Any, Any], services: Services) -> OmiWebhooks:
        """The app's instance, made on first use."""
        state = request.app.state
        hooks: OmiWebhooks | None = state.get("omi_webhooks")
        if hooks is None or hooks.services is not services:
            hooks = cls(services)
            state["omi_webhooks"] = hooks
            services.closers.append(hooks.close)
        return hooks

    def reply(self) -> dict[str, str]:
        """The answer to the cloud: ``{"message": …}`` when OMI_WEBHOOK_REPLY is set, else ``{}``."""
        message = self.services.settings.webhooks.reply
        return {"message": message} if message else {}

    # --- memory created --------------------------------------------------------------------------

    async def memory_created(self, uid: str, memory: OmiConversation) -> Conversation | None:
        """Store the conversation (or change nothing if it is stored so already); None if it has no transcript."""
        if not memory.transcript_segments:
            log.info("memory-created: a conversation without transcript segments; nothing stored")
            return None
        conversation = imported(uid, memory, time.time())
        stored, changed = await self.services.conversations.import_completed(uid, conversation)
        log.info(
            "memory-created: conversation %s %s (%d segments)",
            stored.id,
            "stored" if changed else "unchanged",
            len(stored.segments),
        )
        return stored

    # --- realtime transcript ---------------------------------------------------------------------

    async def realtime(self, uid: str, segments: list[OmiSegment], *, language: str) -> int:
        """Upsert the segments into the user's conversations; how many changed in the one in progress."""
        if not segments:
            return 0
        services = self.services
        conversations = services.conversations
        batch = dict(zip(segment_ids(uid, segments), segments, strict=True))  # a repeated id: the last one counts
        async with self._realtime_locks[uid]:
            known = await services.storage.store.owners(uid, list(batch))
            current = await conversations.current(uid)
            now = time.time()
            clock = self._clocks.get(uid)
            fresh = [seg for sid, seg in batch.items() if sid not in known]
            if fresh:
                low, high = min(s.start for s in fresh), max(s.end for s in fresh)
                if (
                    clock is None
                    or current is None
                    or low < clock.last_end - REWIND_S
                    or clock.origin + high > now + AHEAD_S
                ):
                    clock = _Clock(origin=now - high, last_end=high)  # the newest words were just spoken
                    self._clocks[uid] = clock
                clock.last_end = max(clock.last_end, high)
            origin = clock.origin if clock is not None else now
            changed = await conversations.upsert(
                uid,
                [omi_segment(seg, sid, origin) for sid, seg in batch.items()],
                timeout_s=services.conversation_timeout(None),
                source="omi",
                language=language,
            )
        if changed:
            services.live.publish(uid, LiveEvent("segments", [msgspec.to_builtins(s) for s in changed]))
        log.info("realtime-transcript: %d segment(s) received, %d changed", len(batch), len(changed))
        return len(changed)

    # --- audio bytes -----------------------------------------------------------------------------

    async def audio(self, uid: str, pcm: bytes, *, sample_rate: int, language: str) -> None:
        """Feed raw PCM16 to the user's stream, opening one (or continuing it) as needed."""
        if len(pcm) < 2:
            return
        async with self._audio_locks[uid]:
            session = self._audio.get(uid)
            if session is not None and (session.sample_rate, session.language) != (sample_rate, language):
                await self._end(uid)
                session = None
            if session is None:
                session = await self._open(uid, sample_rate, language)
                self._audio[uid] = session
            step = 2 * sample_rate  # a second at a time, so a long body never holds up the event loop
            for i in range(0, len(pcm), step):
                session.live.feed(pcm[i : i + step])
                await asyncio.sleep(0)
            session.last_post = time.monotonic()
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="omi-audio-reaper")

    async def _open(self, uid: str, sample_rate: int, language: str) -> _AudioSession:
        services = self.services
        # Times count from the first request: a few seconds late, as the cloud batches audio.
        live = LiveSession(
            services,
            uid,
            make_decoder("pcm16", sample_rate),
            language=language,
            source="omi",
            timeout_s=services.conversation_timeout(None),
        )
        try:
            resumed = await live.open()
        except SpeechToTextError as exc:
            raise ServiceUnavailableException(detail=f"speech-to-text refused the stream: {exc.detail}") from exc
        log.info("audio-bytes: stream opened at %d Hz%s", sample_rate, " (resumed conversation)" if resumed else "")
        return _AudioSession(live, sample_rate, language, time.monotonic())

    async def _end(self, uid: str) -> None:
        session = self._audio.pop(uid, None)
        if session is not None:
            await session.live.close()
            log.info("audio-bytes: stream closed")

    async def _reap(self) -> None:
        """End the streams that no request continued for the idle period, until none is left."""
        while self._audio:
            await asyncio.sleep(min(1.0, self.idle_s / 4))
            now = time.monotonic()
            quiet = [uid for uid, s in self._audio.items() if now - s.last_post >= self.idle_s]
            await asyncio.gather(*(self._end_quiet(uid) for uid in quiet))

    async def _end_quiet(self, uid: str) -> None:
        async with self._audio_locks[uid]:
            session = self._audio.get(uid)
            if session is not None and time.monotonic() - session.last_post >= self.idle_s:
                await self._end(uid)

    async def close(self) -> None:
        """The service is stopping: what was heard is transcribed and stored."""
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        await asyncio.gather(*(self._end(uid) for uid in list(self._audio)))


# --- HTTP ------------------------------------------------------------------------------------------


def _query(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The query parameters, first value of each.

    The cloud appends ``?uid=…`` to the URL it was given even when that URL has a query already
    (``…?key=olt_x?uid=U``), so every ``?`` separates parameters. Tokens never contain one.
    """
    raw = request.scope.get("query_string", b"").decode("latin-1").replace("?", "&")
    return {name: values[0] for name, values in parse_qs(raw, keep_blank_values=True).items()}


async def provide_omi_uid(request: Request[Any, Any, Any], services: Services) -> str:
    """The user a webhook call is for: the API token in ``key=`` (or the bearer token), which must be ``uid=``'s."""
    query = _query(request)
    key = query.get("key", "")
    claimed = query.get("uid", "")
    if key:
        if not key.startswith(TOKEN_PREFIX) or services.storage.tokens is None:
            raise NotAuthorizedException(detail=f"key= must be an API token (olt_…); {_TOKEN_HELP}")
        uid = await services.storage.tokens.resolve(key)
        if uid is None:
            raise NotAuthorizedException(detail="the API token in key= is not valid or was revoked")
    else:
        authorization = request.headers.get("authorization")
        if not authorization:
            raise NotAuthorizedException(
                detail=f"add your API token to the webhook URL as key=olt_… (or send it as bearer token); {_TOKEN_HELP}"
            )
        try:
            uid = await authenticate(authorization, services)
        except AuthError as exc:
            raise NotAuthorizedException(detail=str(exc)) from exc
    if claimed and claimed != uid:
        raise NotAuthorizedException(detail="the API token does not belong to the uid in the URL")
    note_uid(request.scope, uid)
    return uid


def _provide_hooks(request: Request[Any, Any, Any], services: Services) -> OmiWebhooks:
    return OmiWebhooks.of(request, services)


def _language(query: dict[str, str]) -> str:
    language = query.get("language") or "en"
    if len(language) > 16:
        raise unprocessable("language must be at most 16 characters", "language")
    return "multi" if language == "auto" else language


def _summary_item(summary: DaySummary) -> dict[str, Any]:
    return {
        "id": summary.id,
        "created_at": iso(summary.created_at),
        "summary": summary.summary,
        "summary_json": summary.summary_json,
    }


class OmiWebhookController(Controller):
    """Receivers of the OMI cloud's developer webhooks; the URL carries the user's API token as ``key=``."""

    path = "/v1/integrations/omi"
    tags = ["omi webhooks"]
    dependencies = {
        "omi_uid": Provide(provide_omi_uid),
        "hooks": Provide(_provide_hooks, sync_to_thread=False),
    }

    @post(
        "/memory-created",
        summary="Store a conversation the OMI cloud finished",
        status_code=200,
        request_max_body_size=MAX_CONVERSATION_BYTES,
    )
    async def memory_created(self, request: Request[Any, Any, Any], omi_uid: str, hooks: OmiWebhooks) -> dict[str, str]:
        """The ``memory_created`` webhook: ``?uid=U&key=olt_…`` with a whole OMI ``Conversation`` as JSON.

        It is stored as one of the user's conversations (segments, speakers, times, and the
        ``structured`` title, overview, action items and events) and queued for Letta and the
        index. Sent again, it updates what changed and nothing else. 422 names a field at fault.
        """
        memory = decode_body(await request.body(), OmiConversation)
        await hooks.memory_created(omi_uid, memory)
        return hooks.reply()

    @post("/realtime-transcript", summary="Add live transcript segments from the OMI cloud", status_code=200)
    async def realtime_transcript(
        self, request: Request[Any, Any, Any], omi_uid: str, hooks: OmiWebhooks
    ) -> dict[str, str]:
        """The ``realtime_transcript`` webhook: ``?uid=U&key=olt_…`` with ``{"session_id", "segments"}``,
        or a bare array of segments (``&session_id=`` in the query).

        The segments join the user's in-progress conversation and the live transcript; a segment
        sent again with the same ``id`` updates the stored one.
        """
        body = decode_body(await request.body(), OmiRealtime | list[OmiSegment])
        segments = body.segments if isinstance(body, OmiRealtime) else body
        await hooks.realtime(omi_uid, segments, language=_language(_query(request)))
        return {}

    @post(
        "/audio-bytes",
        summary="Transcribe raw audio from the OMI cloud",
        status_code=200,
        request_max_body_size=MAX_AUDIO_BYTES,
    )
    async def audio_bytes(self, request: Request[Any, Any, Any], omi_uid: str, hooks: OmiWebhooks) -> dict[str, str]:
        """The ``audio_bytes`` webhook: ``?uid=U&sample_rate=R&key=olt_…`` with PCM16 mono (octet-stream).

        Consecutive requests continue one stream per user, through voice activity detection,
        speech-to-text and diarization, into the user's conversation. The stream ends after
        ``WS_INACTIVITY_TIMEOUT_S`` without a request; the conversation closes after its usual
        silence timeout.
        """
        query = _query(request)
        raw_rate = query.get("sample_rate") or "16000"
        try:
            sample_rate = int(raw_rate)
            make_decoder("pcm16", sample_rate)
        except (ValueError, UnsupportedAudioError):
            raise unprocessable(
                f"sample_rate must be one of {', '.join(map(str, PCM_RATES))}, not {raw_rate[:16]!r}", "sample_rate"
            ) from None
        language = _language(query)
        if not hooks.services.pipeline.transcriber.asr.supports_language(language):
            raise unprocessable(f"The language is not supported, {language}", "language")
        await hooks.audio(omi_uid, await request.body(), sample_rate=sample_rate, language=language)
        return {}

    @post("/day-summary", summary="Keep the day summary the OMI cloud sends", status_code=200)
    async def day_summary(self, request: Request[Any, Any, Any], omi_uid: str, hooks: OmiWebhooks) -> dict[str, str]:
        """The ``day_summary`` webhook: ``?uid=U&key=olt_…`` with ``{"summary", "uid", "created_at"}``.

        ``summary_json`` (sent by newer clouds) is kept too. Stored once (a repeat changes
        nothing) and listed by ``GET /v1/integrations/omi/day-summaries``.
        """
        body: OmiDaySummary = decode_body(await request.body(), OmiDaySummary)
        if body.uid and body.uid != omi_uid:
            raise unprocessable("uid in the body is not the uid of the API token", "$.uid")
        created_at = epoch(body.created_at, "$.created_at") or time.time()
        _, new = await hooks.summaries.add(
            omi_uid, created_at=created_at, summary=body.summary, summary_json=body.summary_json
        )
        log.info("day-summary: %s", "stored" if new else "unchanged")
        return hooks.reply()

    @get("/day-summaries", summary="The day summaries the OMI cloud sent")
    async def day_summaries(
        self,
        omi_uid: str,
        hooks: OmiWebhooks,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 25,
        offset: Annotated[int, Parameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        """The caller's day summaries, newest first: ``{id, created_at, summary, summary_json}``."""
        items, total = await hooks.summaries.page(omi_uid, limit=limit, offset=offset)
        return {"items": [_summary_item(s) for s in items], "total": total, "limit": limit, "offset": offset}
