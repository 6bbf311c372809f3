"""HTTP API: health, metrics, the live transcript, the caller's conversations and voice profiles."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException, ServiceUnavailableException, ValidationException
from litestar.params import Body, Parameter
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage

from app.http.body_limits import describe_size
from app.http.http_audit import note_uid
from app.service.auth import AuthError, check_operator, resolve_uid
from app.service.firebase import looks_like_jwt
from app.service.live_hub import LiveHub
from app.service.services import Services
from core.errors import (
    ConflictError,
    DecodeError,
    NotEnoughSpeechError,
    NotFoundError,
    StorageError,
    UnsupportedAudioError,
)
from memory.search.hybrid import MemorySearch
from memory.store.tokens import PREFIX as TOKEN_PREFIX
from memory.store.voice_profiles import MAX_NAME_CHARS, clean_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import numpy as np
    from numpy.typing import NDArray

    from ingest.diarize.embedded import EmbeddedDiarizer

__all__ = [
    "ConversationController",
    "EmbeddingsController",
    "MemoryController",
    "SpeakerController",
    "erase_my_data",
    "health",
    "live",
    "metrics",
]

log = logging.getLogger(__name__)

MAX_ENROLL_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_OFFSET = 2**31 - 1  # far past any list; a larger one would not fit the database's integer


def provide_services(request: Request[Any, Any, Any]) -> Services:
    """The services built at startup."""
    services: Services = request.app.state.services
    return services


async def authenticate(authorization: str | None, services: Services) -> str:
    """The uid of ``Authorization: Bearer <token>``: a Firebase ID token (the OMI app), a user's API token
    (``olt_…``), or ``<ADMIN_KEY><uid>``.

    Raises:
        AuthError: no usable token; the message is safe to show the client.
    """
    token = authorization.split(" ")[-1] if authorization else ""
    if services.firebase is not None and looks_like_jwt(token):
        return await services.firebase.uid(token)
    if token.startswith(TOKEN_PREFIX) and services.tokens is not None:
        uid = await services.tokens.resolve(token)
        if uid is not None:
            return uid
        if not services.settings.auth.local_development:
            raise AuthError("Invalid or revoked API token")
    return resolve_uid(authorization, services.settings.auth)


async def provide_uid(request: Request[Any, Any, Any], services: Services) -> str:
    """The caller's uid (see :func:`authenticate`); 401 otherwise."""
    try:
        uid = await authenticate(request.headers.get("authorization"), services)
    except AuthError as exc:
        raise NotAuthorizedException(detail=str(exc)) from exc
    note_uid(request.scope, uid)
    return uid


@get("/health", tags=["service"], summary="Liveness and what is loaded")
async def health(services: Services) -> dict[str, Any]:
    """Whether the service is up, with its speech-to-text engine and database."""
    return {
        "status": "ok",
        "stt": services.streaming.name if services.streaming is not None else services.transcriber.asr.name,
        "database": services.store.dialect,
        "streams_active": int(services.metrics.gauges.get("streams_active", 0)),
        "delivery": {
            "sinks": list(services.store.sinks),
            "here": services.delivery_lock is not None,
            "letta": services.settings.letta.url if "letta" in services.store.sinks else None,
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
    return {**erased.counts(), "sinks": list(services.store.sinks)}


class ConversationController(Controller):
    """The caller's conversations, in the OMI ``Conversation`` shape."""

    path = "/v1/conversations"
    tags = ["conversations"]

    @get("/", summary="List conversations, newest first")
    async def list_conversations(
        self,
        services: Services,
        uid: str,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 25,
        offset: Annotated[int, Parameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        """A page of the caller's conversations with their segments, and the total count."""
        items, total = await services.store.page(uid, limit=limit, offset=offset)
        return {"items": [c.to_omi() for c in items], "total": total, "limit": limit, "offset": offset}

    @get("/{conversation_id:str}", summary="One conversation with its segments")
    async def get_conversation(self, services: Services, uid: str, conversation_id: str) -> dict[str, Any]:
        """The conversation, 404 if it is not the caller's."""
        return (await services.store.get(uid, conversation_id)).to_omi()

    @post("/{conversation_id:str}/close", summary="Close an in-progress conversation now", status_code=200)
    async def close_conversation(self, services: Services, uid: str, conversation_id: str) -> dict[str, Any]:
        """Close it as the silence timeout would; a completed one is returned unchanged."""
        conversation = await services.store.get(uid, conversation_id)
        if conversation.status == "in_progress":
            closed = await services.conversations.close(uid, conversation_id)
            if closed is None:
                raise NotFoundError(f"conversation {conversation_id} had no speech and was removed")
            conversation = closed
        return conversation.to_omi()

    @patch("/{conversation_id:str}/speakers", summary="Relabel a speaker across one conversation")
    async def relabel_speaker(
        self, services: Services, uid: str, conversation_id: str, data: SpeakerRelabel
    ) -> dict[str, Any]:
        """Name one speaker (or mark them as the wearer) in every segment of the conversation.

        The stored segments change, and a client streaming this conversation receives them again.
        """
        from ingest.diarize.tracker import Identity
        from ingest.identity import name_speaker

        conversation = await services.store.get(uid, conversation_id)
        if not any(s.speaker_id == data.speaker_id for s in conversation.segments):
            raise NotFoundError(f"conversation {conversation_id} has no speaker {data.speaker_id}")
        if data.is_user:
            identity = Identity(person_id=None, name="me", is_user=True)
        else:
            if not data.name:
                raise ValidationException(detail="give the speaker's `name`, or `is_user: true` for the wearer")
            try:
                name = clean_name(data.name)
            except ValueError as exc:
                raise ValidationException(detail=str(exc)) from exc
            profile = next(
                (
                    p
                    for p in await services.speakers.list(uid)
                    if not p.is_user and p.name.casefold() == name.casefold()
                ),
                None,
            )
            identity = Identity(
                person_id=data.person_id or (profile.id if profile else None),
                name=name,
                is_user=False,
                profile_id=profile.id if profile else None,
            )
        if services.live_speakers is not None:
            current = await services.conversations.current(uid)
            if current is not None and current.id == conversation_id:
                services.live_speakers.tracker(uid).identify(data.speaker_id, identity)
        await services.conversations.relabel(
            uid,
            conversation_id,
            name_speaker(data.speaker_id, identity),
        )
        return (await services.store.get(uid, conversation_id)).to_omi()

    @delete("/{conversation_id:str}", summary="Delete a conversation and its transcript")
    async def delete_conversation(self, services: Services, uid: str, conversation_id: str) -> None:
        """Delete it for good."""
        await services.conversations.forget(uid, conversation_id)


class EnrollForm(msgspec.Struct):
    """The multipart form of a voice enrollment."""

    file: Annotated[
        UploadFile | None,
        msgspec.Meta(description="A recording of one person speaking (WAV, FLAC, MP3 or Ogg), at least 2 s of speech."),
    ] = None
    name: Annotated[
        str | None, msgspec.Meta(description="The speaker's name. Enrolling a known name improves that profile.")
    ] = None
    me: Annotated[
        str | None, msgspec.Meta(description="`true` to enroll the wearer's own voice instead of a named speaker.")
    ] = None


class SpeakerRename(msgspec.Struct):
    """A new name for a voice profile."""

    name: Annotated[str, msgspec.Meta(description=f"The new name, 1 to {MAX_NAME_CHARS} characters.")]


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def _enroll_target(form: EnrollForm) -> tuple[str | None, bool]:
    """``(name, is_user)`` from the form: exactly one of ``name`` and ``me=true``; 400 otherwise."""
    me = (form.me or "").strip().lower()
    if me not in _TRUE + _FALSE:
        raise ValidationException(detail=f"me must be true or false, not {form.me!r}")
    is_user = me in _TRUE
    if form.name is not None and is_user:
        raise ValidationException(detail="give either a name or me=true, not both")
    if form.name is None and not is_user:
        raise ValidationException(
            detail="say whose voice this is: the form field 'name', or me=true for the wearer's own voice"
        )
    return (_valid_name(form.name) if form.name is not None else None), is_user


def _valid_name(name: str) -> str:
    try:
        return clean_name(name)
    except ValueError as exc:
        raise ValidationException(detail=str(exc)) from exc


def _embed_upload(content: bytes, suffix: str, voices: EmbeddedDiarizer) -> tuple[NDArray[np.float32], float]:
    """Decode an uploaded recording and embed its speech (blocking)."""
    from ingest.diarize.enroll import load_enrollment_audio, voice_embedding

    with tempfile.TemporaryDirectory(prefix="omi-letta-enroll-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(content)
        audio = load_enrollment_audio(path)
    return voice_embedding(audio, diarizer=voices)


def bad_form_text(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """400 for a multipart form field that is not text in the charset it names (UTF-8 unless it names one).

    Litestar decodes the fields before the handler runs and lets the decoding error through, which
    would be a 500. Any other ``LookupError`` (a ``KeyError``, say) is ours: a 500, logged.
    """
    if isinstance(exc, UnicodeDecodeError) or (type(exc) is LookupError and str(exc).startswith("unknown encoding")):
        detail = "a form field is not text in the charset it names (UTF-8 unless it names one); give files a filename"
        return Response({"status_code": 400, "detail": detail}, status_code=400)
    log.error("%s %s failed", request.method, request.scope.get("path_template", ""), exc_info=exc)
    return Response({"status_code": 500, "detail": "Internal Server Error"}, status_code=500)


class SpeakerController(Controller):
    """The caller's voice profiles: who conversation speakers are recognised as."""

    path = "/v1/speakers"
    tags = ["speakers"]
    exception_handlers = {UnicodeDecodeError: bad_form_text, LookupError: bad_form_text}

    @post(
        "/enroll",
        summary="Enroll a voice from a recording",
        status_code=201,
        request_max_body_size=MAX_ENROLL_UPLOAD_BYTES,
    )
    async def enroll(
        self,
        services: Services,
        uid: str,
        data: Annotated[EnrollForm, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> dict[str, Any]:
        """Build a voice profile from a recording of one person (multipart field ``file``).

        Name the speaker with ``name``, or send ``me=true`` for the wearer. Enrolling a name that
        exists (in any case), or the wearer again, improves that profile instead of adding one.
        The upload may be up to 50 MiB and 30 minutes long; 400 if it is not audio or has under 2 s
        of speech.
        """
        name, is_user = _enroll_target(data)
        if data.file is None:
            raise ValidationException(detail="send the recording in the multipart form field 'file'")
        filename = data.file.filename or "upload"
        content = await data.file.read()
        if not content:
            raise ValidationException(detail=f"the uploaded file {filename!r} is empty")
        suffix = "".join(re.findall(r"[A-Za-z0-9]", Path(filename).suffix))[:8]
        try:
            embedding, seconds = await asyncio.to_thread(
                _embed_upload, content, f".{suffix}" if suffix else "", services.voices
            )
        except DecodeError as exc:
            raise ValidationException(
                detail=f"the uploaded file {filename!r} is not audio we can read; send WAV, FLAC, MP3 or Ogg"
            ) from exc
        except (NotEnoughSpeechError, UnsupportedAudioError) as exc:
            raise ValidationException(detail=exc.detail) from exc
        profile = await services.speakers.enroll(uid, name=name, is_user=is_user, embedding=embedding, seconds=seconds)
        return profile.to_api()

    @get("/", summary="List voice profiles")
    async def list_speakers(self, services: Services, uid: str) -> dict[str, Any]:
        """The caller's voice profiles, the wearer's first, then by name."""
        return {"items": [p.to_api() for p in await services.speakers.list(uid)]}

    @get("/{speaker_id:str}", summary="One voice profile")
    async def get_speaker(self, services: Services, uid: str, speaker_id: str) -> dict[str, Any]:
        """The profile, 404 if it is not the caller's."""
        return (await services.speakers.get(uid, speaker_id)).to_api()

    @patch("/{speaker_id:str}", summary="Rename a voice profile")
    async def rename_speaker(
        self, services: Services, uid: str, speaker_id: str, data: SpeakerRename
    ) -> dict[str, Any]:
        """Give the profile a new name; 409 if another of the caller's profiles has it."""
        return (await services.speakers.rename(uid, speaker_id, _valid_name(data.name))).to_api()

    @delete("/{speaker_id:str}", summary="Delete a voice profile")
    async def delete_speaker(self, services: Services, uid: str, speaker_id: str) -> None:
        """Forget the voice; its speakers are no longer recognised."""
        await services.speakers.delete(uid, speaker_id)


class SpeakerRelabel(msgspec.Struct):
    """Who one speaker of a conversation is."""

    speaker_id: Annotated[int, msgspec.Meta(ge=0, description="The speaker to relabel (`speaker_id` of its segments).")]
    name: Annotated[
        str | None,
        msgspec.Meta(description="Their name; a voice profile of that name gives its id as `person_id`."),
    ] = None
    is_user: Annotated[bool, msgspec.Meta(description="`true`: the speaker is the wearer (reads `me`).")] = False
    person_id: Annotated[str | None, msgspec.Meta(description="A person id to record on the segments.")] = None


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


MAX_SEARCH_QUERY_CHARS = 1000
MAX_EMBEDDING_INPUTS = 2048
MAX_EMBEDDINGS_BODY_BYTES = 8 * 1024 * 1024  # 2048 texts of 4 KB


def _memory(services: Services) -> MemorySearch:
    if services.memory is None:
        raise ServiceUnavailableException(detail="memory search is not configured")
    return services.memory


class MemoryController(Controller):
    """Search the caller's remembered turns: words and meaning, fused."""

    path = "/v1/memory"
    tags = ["memory"]

    @get("/search", summary="Search the caller's turns")
    async def search(
        self,
        services: Services,
        uid: str,
        q: Annotated[str, Parameter(min_length=1, max_length=MAX_SEARCH_QUERY_CHARS, description="What to look for.")],
        limit: Annotated[int, Parameter(ge=1, le=100)] = 10,
        speaker: Annotated[str | None, Parameter(description="Only turns of this speaker (any case).")] = None,
        conversation_id: Annotated[str | None, Parameter(description="Only turns of this conversation.")] = None,
        since: Annotated[
            float | None, Parameter(description="Only turns ending at or after this epoch second.")
        ] = None,
        until: Annotated[
            float | None, Parameter(description="Only turns starting at or before this epoch second.")
        ] = None,
    ) -> dict[str, Any]:
        """The caller's best turns for ``q``, best first.

        Each hit is ``{turn_id, conversation_id, text, speaker, is_user, start, end, score}``; times
        are epoch seconds and ``score`` is the fused reciprocal-rank score (higher is better).
        """
        if not q.strip():
            raise ValidationException(detail="q must not be blank")
        hits = await _memory(services).search(
            uid, q, limit=limit, speaker=speaker, conversation_id=conversation_id, since=since, until=until
        )
        return {"items": [msgspec.to_builtins(h) for h in hits], "query": q, "limit": limit}


class EmbeddingsRequest(msgspec.Struct):
    """An OpenAI-style embeddings request."""

    input: Annotated[str | list[str], msgspec.Meta(description="A text, or a list of texts.")]
    model: Annotated[str | None, msgspec.Meta(description="Ignored: the service's own model answers.")] = None
    encoding_format: Annotated[
        str | None, msgspec.Meta(description="`float` (default) or `base64` (little-endian float32, as OpenAI).")
    ] = None


class EmbeddingsController(Controller):
    """OpenAI-compatible embeddings with the service's own model, so a local Letta sends nothing out."""

    path = "/v1/embeddings"
    tags = ["memory"]

    @post(
        "/",
        summary="Embed texts (OpenAI-compatible)",
        status_code=200,
        request_max_body_size=MAX_EMBEDDINGS_BODY_BYTES,
    )
    async def embeddings(self, services: Services, uid: str, data: EmbeddingsRequest) -> dict[str, Any]:
        """``{"data": [{"object": "embedding", "embedding": [...], "index": i}], "model", "usage"}``."""
        texts = [data.input] if isinstance(data.input, str) else data.input
        if not texts or len(texts) > MAX_EMBEDDING_INPUTS:
            raise ValidationException(detail=f"input must hold 1 to {MAX_EMBEDDING_INPUTS} texts")
        if data.encoding_format not in (None, "float", "base64"):
            raise ValidationException(detail="encoding_format must be 'float' or 'base64'")
        embedder = await _memory(services).embedder()
        vectors = await asyncio.to_thread(embedder.embed, texts)
        tokens = sum(len(t.split()) for t in texts)  # an estimate; the usage block is informational
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "embedding": (
                        base64.b64encode(v.astype("<f4").tobytes()).decode()
                        if data.encoding_format == "base64"
                        else v.tolist()
                    ),
                    "index": i,
                }
                for i, v in enumerate(vectors)
            ],
            "model": embedder.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def memory_unavailable(request: Request[Any, Any, Any], exc: StorageError) -> Response[dict[str, Any]]:
    """Map an embedding or vector index failure to 503."""
    return Response({"status_code": 503, "detail": exc.detail}, status_code=503)


def storage_full(request: Request[Any, Any, Any], exc: StorageError) -> Response[dict[str, Any]]:
    """Map a full disk to 507 Insufficient Storage: nothing was changed, and retrying helps once space is freed."""
    log.error("a request could not be stored: %s", exc.detail)
    return Response({"status_code": 507, "detail": exc.detail}, status_code=507)
