"""SQLAlchemy tables. Times are UTC epoch seconds (floats) so SQLite and Postgres compare alike.

Columns holding what was said (segment text and translations, summaries) or a voice (profile
embeddings) are encrypted at rest (:mod:`memory.store.encrypted`); names, ids and times are not.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, func, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from memory.store.encrypted import EncryptedBytes, EncryptedJSON, EncryptedText

__all__ = [
    "AgentClaimRow",
    "ApiTokenRow",
    "AuditRow",
    "Base",
    "ConversationRow",
    "DaySummaryRow",
    "DeviceActivityRow",
    "FactRow",
    "LettaPassageRow",
    "OutboxRow",
    "SegmentRow",
    "SpeakerProfileRow",
    "SyncJobRow",
    "UserSettingsRow",
]


class Base(DeclarativeBase):
    """Declarative base of all tables."""


class ConversationRow(Base):
    """A conversation: ``in_progress`` while speech arrives, then ``completed``.

    A conversation the OMI cloud sent (its ``memory_created`` webhook) keeps the cloud's summary
    (``structured``: title, overview, emoji, category, action items, events) and its id there
    (``external_id``); both are None for conversations heard here.
    """

    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    uid: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16), default="in_progress")
    source: Mapped[str] = mapped_column(String(32), default="omi")
    language: Mapped[str] = mapped_column(String(16), default="en")
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float] = mapped_column(Float)
    last_speech_at: Mapped[float] = mapped_column(Float)
    timeout_s: Mapped[int] = mapped_column(Integer, default=120)
    discarded: Mapped[bool] = mapped_column(Boolean, default=False)
    structured: Mapped[dict[str, Any] | None] = mapped_column(EncryptedJSON("conversations.structured"), nullable=True)
    external_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    starred: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))

    segments: Mapped[list[SegmentRow]] = relationship(
        back_populates="conversation",
        cascade="all, delete-orphan",
        order_by="SegmentRow.position",
        lazy="selectin",
    )

    __table_args__ = (
        Index("ix_conversations_uid_status", "uid", "status"),
        Index("ix_conversations_uid_external_id", "uid", "external_id"),
        Index("ix_conversations_uid_started_at", "uid", "started_at"),
    )


class SegmentRow(Base):
    """A finalized transcript segment of a conversation."""

    __tablename__ = "segments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(EncryptedText("segments.text"))
    speaker: Mapped[str] = mapped_column(String(32))
    speaker_id: Mapped[int] = mapped_column(Integer)
    is_user: Mapped[bool] = mapped_column(Boolean)
    person_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    translations: Mapped[list[dict[str, str]]] = mapped_column(EncryptedJSON("segments.translations"), default=list)
    speech_profile_processed: Mapped[bool] = mapped_column(Boolean, default=True)
    stt_provider: Mapped[str | None] = mapped_column(String(64), nullable=True)
    speaker_name: Mapped[str | None] = mapped_column(String(100), nullable=True)

    conversation: Mapped[ConversationRow] = relationship(back_populates="segments")


class SpeakerProfileRow(Base):
    """A voice profile of one of the user's speakers; ``is_user`` marks the wearer's own voice.

    ``embedding`` is a 256-d L2-normalised float32 vector (little-endian bytes) built from
    ``seconds`` of speech. Names are unique per user regardless of case, and a user has at most
    one wearer profile; both are enforced by indexes as well as by the store. ``updated_at`` is
    the row's version: an update that raced another fails with ``StaleDataError``.
    """

    __tablename__ = "speaker_profiles"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    uid: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(100))
    is_user: Mapped[bool] = mapped_column(Boolean, default=False)
    embedding: Mapped[bytes] = mapped_column(EncryptedBytes("speaker_profiles.embedding"))
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)

    __mapper_args__ = {"version_id_col": updated_at, "version_id_generator": False}


Index("uq_speaker_profiles_uid_name", SpeakerProfileRow.uid, func.lower(SpeakerProfileRow.name), unique=True)
Index(
    "uq_speaker_profiles_wearer",
    SpeakerProfileRow.uid,
    unique=True,
    sqlite_where=text("is_user"),
    postgresql_where=text("is_user"),
)


class OutboxRow(Base):
    """A change still to be delivered to one sink (Letta, the vector index) for one user.

    Written in the same transaction as the change itself. Records of one user and sink are
    delivered in ``id`` order; ``status`` is ``pending``, ``done`` or ``dead`` (gave up).
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(128))
    sink: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(32))
    conversation_id: Mapped[str] = mapped_column(String(36))
    turn_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_outbox_sink_status_uid", "sink", "status", "uid", "id"),)


class LettaPassageRow(Base):
    """A passage group the Letta sink put (or is putting) into an agent's archival memory.

    ``key`` is the group's content hash, also its ``grp:<key>`` tag in Letta. ``state`` is
    ``pending`` from just before the insert until Letta answered with ``passage_id``, then
    ``stored``; a ``pending`` row left by a crash is settled by looking the tag up in Letta.
    """

    __tablename__ = "letta_passages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(128))
    agent_id: Mapped[str] = mapped_column(String(64))
    conversation_id: Mapped[str] = mapped_column(String(36))
    key: Mapped[str] = mapped_column(String(64))
    passage_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        Index("uq_letta_passages_agent_key", "agent_id", "key", unique=True),
        Index("ix_letta_passages_agent_conversation", "agent_id", "conversation_id"),
    )


class AgentClaimRow(Base):
    """Who creates, or created, a user's Letta agent: one row per user, so one worker at a time creates it.

    A worker inserts the row (``owner``, ``claimed_at``) before it creates the agent, and sets
    ``agent_id`` once Letta answered. The primary key makes the insert the claim: a second worker's
    fails, and it waits for ``agent_id`` instead of creating an agent of its own.
    """

    __tablename__ = "letta_agent_claims"

    uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    agent_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claimed_at: Mapped[float] = mapped_column(Float)


class DeviceActivityRow(Base):
    """When audio last arrived from a user's device (any worker): for the alert on a device gone silent."""

    __tablename__ = "device_activity"

    uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_audio_at: Mapped[float] = mapped_column(Float)


class ApiTokenRow(Base):
    """A user's API token for clients other than the device. Only its SHA-256 ``digest`` is kept;
    ``hint`` is the token's first characters, to tell tokens apart in a list."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    uid: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(100))
    digest: Mapped[str] = mapped_column(String(64))
    hint: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("uq_api_tokens_digest", "digest", unique=True),)


class DaySummaryRow(Base):
    """A day summary the OMI cloud sent (its ``day_summary`` webhook): the text, and its structured form if any.

    ``id`` is a digest of the user, the time and the text, so a repeated delivery is stored once.
    """

    __tablename__ = "day_summaries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    uid: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)
    summary: Mapped[str] = mapped_column(EncryptedText("day_summaries.summary"))
    summary_json: Mapped[dict[str, Any] | None] = mapped_column(
        EncryptedJSON("day_summaries.summary_json"), nullable=True
    )
    received_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_day_summaries_uid_created_at", "uid", "created_at"),)


class AuditRow(Base):
    """One audited access: who (``uid``) did what (``action``) to which conversation, when, how and from where.

    ``route`` is the route template (``GET /v1/conversations/{conversation_id}``), the MCP tool
    (``mcp:search_memory``), ``ws:/v4/listen`` or ``cli:audit``; ``client`` the remote address;
    ``status`` the HTTP status, or the WebSocket close code. Never what was said or searched for.
    Append-only: database triggers refuse UPDATE and DELETE (migration 0008).
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    uid: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))
    conversation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    route: Mapped[str] = mapped_column(String(128))
    client: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_audit_log_uid_at", "uid", "at"), Index("ix_audit_log_at", "at"))


class SyncJobRow(Base):
    """An upload of the OMI device's offline recordings, and how far its processing got.

    ``content_id`` keys it by the user and the files' names and contents, so the same upload again
    finds this job. ``files`` lists each file's name, size, digest and start (the audio itself lies
    encrypted under ``DATA_DIR/sync/<id>/`` until its conversations are delivered). ``result`` is the
    OMI shape: ``new_memories``, ``updated_memories`` (conversation ids), ``failed_segments``,
    ``total_segments`` and ``errors``; no transcript text.
    """

    __tablename__ = "sync_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    uid: Mapped[str] = mapped_column(String(128))
    content_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # queued | processing | completed | partial_failure | failed
    language: Mapped[str] = mapped_column(String(16))
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    total_files: Mapped[int] = mapped_column(Integer)
    total_segments: Mapped[int] = mapped_column(Integer, default=0)
    processed_segments: Mapped[int] = mapped_column(Integer, default=0)
    successful_segments: Mapped[int] = mapped_column(Integer, default=0)
    failed_segments: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    audio_deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        Index("ix_sync_jobs_uid_content", "uid", "content_id", unique=True),
        Index("ix_sync_jobs_status", "status"),
    )


class UserSettingsRow(Base):
    """What the OMI app asks about a user at start-up (language, onboarding), and where their chat view starts.

    ``chat_cleared_at`` hides the agent's messages before it from ``GET /v2/messages`` (the app's
    "clear chat"); the agent itself remembers them. None everywhere until the app sets it.
    """

    __tablename__ = "user_settings"

    uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    language: Mapped[str | None] = mapped_column(String(16), nullable=True)
    onboarding_completed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    acquisition_source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    time_zone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    chat_cleared_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)


class FactRow(Base):
    """Something a conversation revealed about the user (OMI's "memories"), or one the user wrote.

    ``conversation_id`` is the conversation it came from (None: added by hand). A fact that a later
    one replaces keeps its row with ``superseded_by`` set; one the user deletes gets ``removed_at``.
    Only rows with neither are the user's facts now.
    """

    __tablename__ = "facts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    uid: Mapped[str] = mapped_column(String(128))
    content: Mapped[str] = mapped_column(EncryptedText("facts.content"))
    category: Mapped[str] = mapped_column(String(32))
    conversation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    manual: Mapped[bool] = mapped_column(Boolean, default=False)  # added by the user
    edited: Mapped[bool] = mapped_column(Boolean, default=False)  # rewritten by the user
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    superseded_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    removed_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_facts_uid_created_at", "uid", "created_at"),)
