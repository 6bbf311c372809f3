"""Which of a user's conversations a list shows: by status, discarded or not, starred, and when they started."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import Select, select

from memory.store.models import ConversationRow

__all__ = ["STATUSES", "ConversationQuery"]

STATUSES = ("in_progress", "processing", "merging", "completed", "failed")
"""Every status the OMI app knows; conversations here are only ever ``in_progress`` or ``completed``."""


class ConversationQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A filter over one user's conversations; every field None (or default) lets all through."""

    statuses: tuple[str, ...] | None = None
    include_discarded: bool = True
    starred: bool | None = None
    since: float | None = None  # started at or after (epoch s)
    until: float | None = None  # started at or before (epoch s)

    def where(self, uid: str, query: Select[Any]) -> Select[Any]:
        """``query`` restricted to ``uid``'s conversations that pass this filter."""
        query = query.where(ConversationRow.uid == uid)
        if self.statuses is not None:
            query = query.where(ConversationRow.status.in_(self.statuses))
        if not self.include_discarded:
            query = query.where(ConversationRow.discarded.is_(False))
        if self.starred is not None:
            query = query.where(ConversationRow.starred.is_(self.starred))
        if self.since is not None:
            query = query.where(ConversationRow.started_at >= self.since)
        if self.until is not None:
            query = query.where(ConversationRow.started_at <= self.until)
        return query

    def rows(self, uid: str, *, limit: int, offset: int) -> Select[Any]:
        """The matching rows, newest first."""
        return (
            self.where(uid, select(ConversationRow))
            .order_by(ConversationRow.started_at.desc(), ConversationRow.created_at.desc(), ConversationRow.id)
            .limit(limit)
            .offset(offset)
        )
