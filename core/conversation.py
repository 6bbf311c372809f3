"""A conversation as it is stored and shown: its segments, times and OMI summary."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from core.segments import TranscriptSegment

__all__ = ["DEFAULT_STRUCTURED", "Conversation", "iso"]

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

    def to_omi(self) -> dict[str, Any]:
        """The conversation in the OMI backend's ``Conversation`` shape."""
        return {
            "id": self.id,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "source": self.source,
            "language": self.language,
            "structured": {**DEFAULT_STRUCTURED, "action_items": [], "events": [], **(self.structured or {})},
            "transcript_segments": [msgspec.to_builtins(s) for s in self.segments],
            "transcript_segments_compressed": False,
            "geolocation": None,
            "photos": [],
            "audio_files": [],
            "apps_results": [],
            "plugins_results": [],
            "external_data": None,
            "discarded": self.discarded,
            "visibility": "private",
            "starred": False,
            "status": self.status,
            "is_locked": False,
        }
