"""The OMI app's JSON decoding, written from its Dart source: what it reads, and where it throws.

Each ``decode_*`` function reads a JSON value the way the app's ``fromJson`` does (Fledgewing/omi
at 71ac9ec, ``app/lib/backend/schema/*.dart``; the newer generated wire parsers where they are
stricter) and raises :class:`AppDecodeError` wherever the app would throw. They return what the app
ends up with, for tests to compare. Dart's rules, applied throughout:

- ``x: json['k']`` into a non-nullable ``String``/``int``/``bool`` throws on null, a missing key or
  another type; ``json['k'] ?? d`` does not.
- ``DateTime.parse`` throws on null and on what is not ISO 8601; a string without an offset is
  read as local time, so every date must carry ``Z`` or ``+00:00``.
- A JSON integer into ``double`` throws, and a JSON float (``30.0``) into ``int`` throws.
- One element that throws fails the whole list (no list is decoded element by element).
"""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from typing import Any

__all__ = [
    "AppDecodeError",
    "decode_conversation",
    "decode_conversation_list",
    "decode_create_conversation",
    "decode_memory",
    "decode_message",
    "decode_person",
    "decode_search",
    "decode_segment",
    "decode_speech_profile",
    "decode_stream",
    "decode_structured",
    "decode_sync_job_start",
    "decode_sync_job_status",
    "decode_sync_v1",
]

CONVERSATION_STATUSES = ("in_progress", "processing", "merging", "completed", "failed")
SOURCES = [
    "friend",
    "omi",
    "workflow",
    "openglass",
    "screenpipe",
    "sdcard",
    "fieldy",
    "bee",
    "xor",
    "frame",
    "friend_com",
    "apple_watch",
    "phone",
    "desktop",
    "limitless",
]
# The keys newer builds require to be present (nullable or not): conversation_wire.g.dart@0235d91c.
WIRE_CONVERSATION_KEYS = ("id", "created_at", "started_at", "finished_at", "structured")
_OFFSET = re.compile(r"(Z|[+-]\d\d:?\d\d)$")


class AppDecodeError(AssertionError):
    """The app's decoding would throw here (or, for a date, read the wrong time)."""


def _need(json_: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(json_, dict):
        raise AppDecodeError(f"{where}: not an object: {json_!r}")
    value = json_.get(key)
    if value is None or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AppDecodeError(f"{where}.{key}: {value!r} is not a {kind}")
    return value


def _maybe(json_: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    value = json_.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AppDecodeError(f"{where}.{key}: {value!r} is not a {kind} (nor null)")
    return value


def _no_null(json_: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Newer builds throw on an explicit null for a field with a default."""
    for key in keys:
        if key in json_ and json_[key] is None:
            raise AppDecodeError(f"{where}.{key}: null where newer builds need a value")


def _date(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise AppDecodeError(f"{where}: {value!r} is not a date string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise AppDecodeError(f"{where}: {value!r} is not ISO 8601") from exc
    if not _OFFSET.search(value):
        raise AppDecodeError(f"{where}: {value!r} has no offset, so the app reads it as local time")
    return parsed


def _list(json_: dict[str, Any], key: str, where: str) -> list[Any]:
    value = json_.get(key)
    if value is None:
        if key in json_:
            raise AppDecodeError(f"{where}.{key}: null where newer builds need a list")
        return []
    if not isinstance(value, list):
        raise AppDecodeError(f"{where}.{key}: {value!r} is not a list")
    return value


# --- conversations (schema/conversation.dart, structured.dart, transcript_segment.dart) -------------


def decode_segment(json_: dict[str, Any], where: str = "segment") -> dict[str, Any]:
    """``TranscriptSegment.fromJson`` (transcript_segment.dart:73-86) and the wire parser's required keys."""
    text = _need(json_, "text", str, where)
    segment_id = _maybe(json_, "id", str, where, "")
    if not segment_id:
        raise AppDecodeError(f"{where}.id: empty; the app upserts and edits segments by id")
    speaker = _maybe(json_, "speaker", str, where, "SPEAKER_00")
    parts = speaker.split("_")
    if len(parts) < 2 or not re.fullmatch(r"-?\d+", parts[1]):
        raise AppDecodeError(f"{where}.speaker: {speaker!r}; the app parses the number after '_'")
    for key in ("is_user", "start", "end"):  # required by newer builds
        if key not in json_:
            raise AppDecodeError(f"{where}.{key}: missing")
    is_user = _need(json_, "is_user", bool, where)
    for key in ("start", "end"):
        _need(json_, key, (int, float), where)
    _maybe(json_, "person_id", str, where)
    _maybe(json_, "speech_profile_processed", bool, where, True)
    _maybe(json_, "stt_provider", str, where)
    for i, t in enumerate(_list(json_, "translations", where)):
        _need(t, "lang", str, f"{where}.translations[{i}]")
        _need(t, "text", str, f"{where}.translations[{i}]")
    return {
        "id": segment_id,
        "text": text,
        "speaker_id": int(parts[1]),
        "is_user": is_user,
        "person_id": json_.get("person_id"),
        "start": float(json_["start"]),
        "end": float(json_["end"]),
    }


def decode_structured(json_: dict[str, Any], where: str = "structured") -> dict[str, Any]:
    """``Structured.fromJson`` (structured.dart:28-62), ``ActionItem`` and ``Event``."""
    out = {key: _need(json_, key, str, where) for key in ("title", "overview", "emoji", "category")}
    if not out["category"]:
        raise AppDecodeError(f"{where}.category: empty; the tag chip takes its first letter (RangeError)")
    items = []
    for i, item in enumerate(_list(json_, "action_items", where)):
        if isinstance(item, str):
            raise AppDecodeError(f"{where}.action_items[{i}]: a string; newer builds need an object")
        items.append(_need(item, "description", str, f"{where}.action_items[{i}]"))
        _maybe(item, "completed", bool, f"{where}.action_items[{i}]")
    events = []
    for i, event in enumerate(_list(json_, "events", where)):
        at = f"{where}.events[{i}]"
        title = _need(event, "title", str, at)
        start = event.get("start")
        if isinstance(start, str):
            _date(start, f"{at}.start")
        elif not isinstance(start, int) or isinstance(start, bool):
            raise AppDecodeError(f"{at}.start: {start!r} is neither epoch seconds nor an ISO date")
        _need(event, "duration", int, at)
        events.append(title)
    out["action_items"] = items
    out["events"] = events
    return out


def decode_conversation(json_: dict[str, Any], where: str = "conversation") -> dict[str, Any]:
    """``ServerConversation.fromJson`` (conversation.dart:173-257), with the wire parser's required keys."""
    for key in WIRE_CONVERSATION_KEYS:
        if key not in json_:
            raise AppDecodeError(f"{where}.{key}: missing (newer builds require the key)")
    out: dict[str, Any] = {
        "id": _need(json_, "id", str, where),
        "created_at": _date(json_.get("created_at"), f"{where}.created_at"),
        "started_at": _date(json_["started_at"], f"{where}.started_at") if json_["started_at"] is not None else None,
        "finished_at": _date(json_["finished_at"], f"{where}.finished_at")
        if json_["finished_at"] is not None
        else None,
        "structured": decode_structured(_need(json_, "structured", dict, where), f"{where}.structured"),
    }
    out["segments"] = [
        decode_segment(s, f"{where}.transcript_segments[{i}]")
        for i, s in enumerate(_list(json_, "transcript_segments", where))
    ]
    for i, result in enumerate(_list(json_, "apps_results", where)):
        _need(result, "content", str, f"{where}.apps_results[{i}]")
        if "app_id" not in result:
            raise AppDecodeError(f"{where}.apps_results[{i}].app_id: missing")
    for key in ("suggested_summarization_apps", "photos", "audio_files"):
        _list(json_, key, where)
    geolocation = json_.get("geolocation")
    if geolocation is not None:
        for key in ("latitude", "longitude"):
            _need(geolocation, key, float, f"{where}.geolocation")
    _no_null(json_, ("discarded", "starred", "is_locked", "visibility", "status"), where)
    for key in ("discarded", "starred", "is_locked", "deleted"):
        _maybe(json_, key, bool, where)
    _maybe(json_, "language", str, where)
    _maybe(json_, "folder_id", str, where)
    source = _maybe(json_, "source", str, where, "omi")
    out["source"] = source if source in SOURCES else None
    status = json_.get("status")
    if status is not None and status not in CONVERSATION_STATUSES:
        raise AppDecodeError(f"{where}.status: {status!r} is none of {CONVERSATION_STATUSES}")
    out["status"] = status or "completed"
    out["discarded"] = bool(json_.get("discarded", False))
    out["starred"] = bool(json_.get("starred", False))
    return out


def decode_conversation_list(body: Any) -> list[dict[str, Any]]:
    """``getConversations`` (api/conversations.dart:62): ``jsonDecode(body) as List``."""
    if not isinstance(body, list):
        raise AppDecodeError(f"the conversation list is not a JSON array: {str(body)[:200]}")
    return [decode_conversation(c, f"[{i}]") for i, c in enumerate(body)]


def decode_create_conversation(body: Any) -> dict[str, Any] | None:
    """``CreateConversationResponse.fromJson`` (conversation.dart:20-27); the conversation, if any."""
    if not isinstance(body, dict):
        raise AppDecodeError("the answer is not an object")
    for i, message in enumerate(body.get("messages") or []):
        decode_message(message, f"messages[{i}]")
    conversation = body.get("conversation", body.get("memory"))
    return decode_conversation(conversation) if conversation is not None else None


def decode_search(body: Any) -> dict[str, Any]:
    """``searchConversationsServer`` (api/conversations.dart:390-413): ``items``, ``current_page``,
    ``total_pages`` cast without defaults; ``per_page`` required by newer builds."""
    items = _need(body, "items", list, "search")
    pages = {key: _need(body, key, int, "search") for key in ("current_page", "total_pages", "per_page")}
    return {"items": [decode_conversation(c, f"search.items[{i}]") for i, c in enumerate(items)], **pages}


# --- people, speech profile (schema/person.dart, api/speech_profile.dart) ---------------------------


def decode_person(json_: dict[str, Any], where: str = "person") -> dict[str, Any]:
    """``Person.fromJson`` (person.dart:49-62)."""
    out = {"id": _need(json_, "id", str, where), "name": _need(json_, "name", str, where)}
    _date(json_.get("created_at"), f"{where}.created_at")
    _date(json_.get("updated_at"), f"{where}.updated_at")
    for i, sample in enumerate(_maybe(json_, "speech_samples", list, where, [])):
        if not isinstance(sample, str):
            raise AppDecodeError(f"{where}.speech_samples[{i}]: {sample!r} is not a string")
    _maybe(json_, "speech_sample_transcripts", list, where)
    _maybe(json_, "speech_samples_version", int, where)
    _maybe(json_, "color_idx", int, where)
    return out


def decode_speech_profile(body: Any) -> bool:
    """``userHasSpeakerProfile`` (speech_profile.dart:8-21): ``json['has_profile'] ?? false``."""
    if not isinstance(body, dict):
        raise AppDecodeError("the answer is not an object")
    value = body.get("has_profile")
    if value is not None and not isinstance(value, bool):
        raise AppDecodeError(f"has_profile: {value!r} is not a bool")
    return bool(value)


# --- chat (schema/message.dart, api/messages.dart, http/shared.dart) --------------------------------


def decode_message(json_: dict[str, Any], where: str = "message") -> dict[str, Any]:
    """``ServerMessage.fromJson`` (message.dart:221-237), with its files and memories."""
    out = {
        "id": _need(json_, "id", str, where),
        "created_at": _date(json_.get("created_at"), f"{where}.created_at"),
        "text": _maybe(json_, "text", str, where, ""),
    }
    sender = json_.get("sender")
    if sender not in ("ai", "human"):
        raise AppDecodeError(f"{where}.sender: {sender!r} is neither 'ai' nor 'human' (StateError)")
    out["sender"] = sender
    out["type"] = _need(json_, "type", str, where)
    _maybe(json_, "plugin_id", str, where)
    _maybe(json_, "from_integration", bool, where)
    rating = json_.get("rating")
    if rating is not None and (not isinstance(rating, int) or isinstance(rating, bool)):
        raise AppDecodeError(f"{where}.rating: {rating!r} is not an int")
    for i, file in enumerate(_list(json_, "files", where)):
        _need(file, "id", str, f"{where}.files[{i}]")
        _date(file.get("created_at"), f"{where}.files[{i}].created_at")
    for i, memory in enumerate(_list(json_, "memories", where)):
        at = f"{where}.memories[{i}]"
        _need(memory, "id", str, at)
        _date(memory.get("created_at"), f"{at}.created_at")
        structured = _need(memory, "structured", dict, at)
        _need(structured, "title", str, f"{at}.structured")
        _need(structured, "emoji", str, f"{at}.structured")
    _maybe(json_, "ask_for_nps", bool, where)
    if json_.get("chart_data") is not None:
        for d, dataset in enumerate(_need(json_["chart_data"], "datasets", list, f"{where}.chart_data")):
            for p, point in enumerate(_need(dataset, "data_points", list, f"{where}.chart_data.datasets[{d}]")):
                _need(point, "value", (int, float), f"{where}.chart_data.datasets[{d}].data_points[{p}]")
    return out


def decode_stream(body: bytes, *, reads: list[bytes] | None = None) -> list[tuple[str, Any]]:
    """``makeStreamingApiCall`` + ``sendMessageStreamServer`` (shared.dart:229-253, messages.dart:60-82).

    The body is split as the app splits each network read (``reads``, default: the whole body as
    one): on blank lines, a piece of 1024 characters or more kept and glued to the next. Each piece
    is ``think:``, ``data:``, ``done:`` or ``message:``; anything else makes the app show its server
    error and stop, which raises here. Returns ``(kind, value)``: text for ``think``/``data``, the
    decoded message for ``done``.
    """
    events: list[tuple[str, Any]] = []
    buffer = ""

    def piece(raw: str) -> None:
        if raw.startswith("think: "):
            events.append(("think", raw[len("think: ") :].replace("__CRLF__", "\n")))
        elif raw.startswith("data: "):
            events.append(("data", raw[len("data: ") :].replace("__CRLF__", "\n")))
        elif raw.startswith(("done: ", "message: ")):
            kind, _, payload = raw.partition(": ")
            padded = payload + "=" * (-len(payload) % 4)
            try:
                decoded = json.loads(base64.b64decode(padded).decode())
            except ValueError as exc:
                raise AppDecodeError(f"{kind}: the payload is not base64 JSON ({exc})") from exc
            events.append((kind, decode_message(decoded, kind)))
        else:
            raise AppDecodeError(f"an unknown line makes the app fail the chat: {raw[:80]!r}")

    for chunk in [r.decode() for r in reads] if reads else [body.decode()]:
        for part in chunk.split("\n\n"):
            if not part:
                continue
            if len(part) >= 1024:
                buffer += part
                continue
            if buffer:
                part, buffer = buffer + part, ""
            piece(part)
    if buffer:
        piece(buffer)
    return events


# --- memories (schema/memory.dart) -----------------------------------------------------------------


def decode_memory(json_: dict[str, Any], where: str = "memory") -> dict[str, Any]:
    """``Memory.fromJson`` (memory.dart:52-71)."""
    out = {key: _need(json_, key, str, where) for key in ("id", "uid", "content")}
    _date(json_.get("created_at"), f"{where}.created_at")
    _date(json_.get("updated_at"), f"{where}.updated_at")
    _maybe(json_, "conversation_id", str, where)
    for key in ("reviewed", "manually_added", "edited", "deleted", "is_locked"):
        _maybe(json_, key, bool, where)
    _maybe(json_, "user_review", bool, where)
    _maybe(json_, "category", str, where)
    visibility = json_.get("visibility")
    if visibility is not None and visibility not in ("public", "private"):
        raise AppDecodeError(f"{where}.visibility: {visibility!r}")
    return out


# --- offline sync (schema/conversation.dart:366-381; the generated wire models) ---------------------


def decode_sync_v1(body: Any) -> dict[str, list[str]]:
    """``SyncLocalFilesResponse.fromJson``: two optional lists of ids (strings)."""
    out = {}
    for key in ("new_memories", "updated_memories"):
        values = _maybe(body, key, list, "sync", [])
        if not all(isinstance(v, str) for v in values):
            raise AppDecodeError(f"sync.{key}: the ids must be strings")
        out[key] = values
    return out


def decode_sync_job_start(body: Any) -> dict[str, Any]:
    """``GeneratedSyncJobStartResponse``: required ``job_id``, ``status``, ``poll_after_ms``, counters."""
    out = {"job_id": _need(body, "job_id", str, "job"), "status": _need(body, "status", str, "job")}
    for key in ("poll_after_ms", "total_files", "total_segments"):
        out[key] = _need(body, key, int, "job")
    return out


def decode_sync_job_status(body: Any) -> dict[str, Any]:
    """``GeneratedSyncJobStatusResponse``: ``job_id`` and ``status``; int counters; an optional result."""
    out = {"job_id": _need(body, "job_id", str, "job"), "status": _need(body, "status", str, "job")}
    if out["status"] not in ("queued", "processing", "completed", "partial_failure", "failed"):
        raise AppDecodeError(f"job.status: {out['status']!r}")
    _no_null(body, ("total_segments", "processed_segments", "successful_segments", "failed_segments"), "job")
    for key in ("total_segments", "processed_segments", "successful_segments", "failed_segments"):
        out[key] = _maybe(body, key, int, "job", 0)
    result = _maybe(body, "result", dict, "job")
    if result is not None:
        out["result"] = decode_sync_v1(result)
        for key in ("failed_segments", "total_segments"):
            _maybe(result, key, int, "job.result")
        errors = _maybe(result, "errors", list, "job.result", [])
        if not all(isinstance(e, str) for e in errors):
            raise AppDecodeError("job.result.errors: not strings")
    _maybe(body, "error", str, "job")
    return out
