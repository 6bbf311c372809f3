"""A conversation as it is stored and shown: its segments, times and OMI summary."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from core.segments import TranscriptSegment

__all__ = ["DEFAULT_STRUCTURED", "Conversation", "app_structured", "iso"]

DEFAULT_STRUCTURED: dict[str, Any] = {
    "title": "",
    "overview": "",
    "emoji": "🧠",
    "category": "other",
    "action_items": [],
    "events": [],
}
"""The OMI ``structured`` summary of a conversation that has none (every conversation heard here)."""


def iso(ts: float) -> str:
    """Epoch seconds to an ISO 8601 UTC string."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def _text(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _action_item(item: Any) -> dict[str, Any] | None:
    if isinstance(item, str):
        return {"description": item, "completed": False} if item.strip() else None
    if not isinstance(item, dict) or not isinstance(item.get("description"), str):
        return None
    return {**item, "completed": bool(item.get("completed", False))}


def _event(event: Any, fallback_start: float) -> dict[str, Any] | None:
    if not isinstance(event, dict) or not isinstance(event.get("title"), str):
        return None
    start = event.get("start")
    duration = event.get("duration", 30)
    return {
        **event,
        "description": _text(event.get("description")),
        "start": start if isinstance(start, str) and start else iso(fallback_start),
        "duration": int(duration) if isinstance(duration, int | float) else 30,
        "created": bool(event.get("created", False)),
    }


def app_structured(structured: dict[str, Any] | None, started_at: float) -> dict[str, Any]:
    """A summary in the shape the OMI app decodes without failing.

    Title, overview, emoji and category are strings and the category is never empty (the app
    capitalises its first letter); action items are objects with a ``description``; an event has a
    title, a start and a whole number of minutes. Anything else is dropped rather than sent.
    """
    given = structured or {}
    return {
        **given,
        "title": _text(given.get("title")),
        "overview": _text(given.get("overview")),
        "emoji": _text(given.get("emoji"), DEFAULT_STRUCTURED["emoji"]),
        "category": _text(given.get("category")).strip() or DEFAULT_STRUCTURED["category"],
        "action_items": [a for a in map(_action_item, given.get("action_items") or []) if a is not None],
        "events": [e for e in (_event(e, started_at) for e in given.get("events") or []) if e is not None],
    }


class Conversation(msgspec.Struct, kw_only=True):
    """A stored conversation with its segments (times in epoch seconds)."""

    id: str
    uid: str
    status: str
    source: str
    language: str
    created_at: float
    started_at: float
    finished_at: float
    last_speech_at: float
    timeout_s: int
    discarded: bool = False
    segments: list[TranscriptSegment] = msgspec.field(default_factory=list)
    structured: dict[str, Any] | None = None  # the OMI cloud's summary (title, overview, ...), if it sent one
    external_id: str | None = None  # the conversation's id in the OMI cloud, if it came from there
    starred: bool = False

    def to_omi(self) -> dict[str, Any]:
        """The conversation in the OMI backend's ``Conversation`` shape, every key of it (newer app
        builds require keys such as ``started_at`` even when null)."""
        return {
            "id": self.id,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "source": self.source,
            "language": self.language,
            "structured": app_structured(self.structured, self.started_at),
            "transcript_segments": [msgspec.to_builtins(s) for s in self.segments],
            "transcript_segments_compressed": False,
            "geolocation": None,
            "photos": [],
            "audio_files": [],
            "private_cloud_sync_enabled": False,
            "apps_results": [],
            "suggested_summarization_apps": [],
            "plugins_results": [],
            "external_data": None,
            "app_id": None,
            "discarded": self.discarded,
            "visibility": "private",
            "starred": self.starred,
            "processing_memory_id": None,
            "processing_conversation_id": None,
            "status": self.status,
            "is_locked": False,
            "data_protection_level": None,
            "folder_id": None,
        }
