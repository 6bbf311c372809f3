"""SQLAlchemy tables. Times are UTC epoch seconds (floats) so SQLite and Postgres compare alike."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["Base", "ConversationRow", "SegmentRow"]


class Base(DeclarativeBase):
    """Declarative base of all tables."""


class ConversationRow(Base):
    """A conversation: ``in_progress`` while speech arrives, then ``completed``."""

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

    segments: Mapped[list[SegmentRow]] = relationship(
        back_populates="conversation",
        cascade="all, delete-orphan",
        order_by="SegmentRow.position",
        lazy="selectin",
    )

    __table_args__ = (Index("ix_conversations_uid_status", "uid", "status"),)


class SegmentRow(Base):
    """A finalized transcript segment of a conversation."""

    __tablename__ = "segments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    speaker: Mapped[str] = mapped_column(String(32))
    speaker_id: Mapped[int] = mapped_column(Integer)
    is_user: Mapped[bool] = mapped_column(Boolean)
    person_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    translations: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    speech_profile_processed: Mapped[bool] = mapped_column(Boolean, default=True)
    stt_provider: Mapped[str | None] = mapped_column(String(64), nullable=True)

    conversation: Mapped[ConversationRow] = relationship(back_populates="segments")
