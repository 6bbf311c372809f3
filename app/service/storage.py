"""Where everything heard is kept: the database, opened and unlocked, and the stores over it."""

from __future__ import annotations

from dataclasses import dataclass

from app.ops.keys import unlock
from app.settings import Settings
from memory.store.audit_log import AuditLog
from memory.store.conversation_store import ConversationStore
from memory.store.day_summaries import DaySummaryStore
from memory.store.facts import FactStore
from memory.store.tokens import TokenStore
from memory.store.user_settings import UserSettingsStore
from memory.store.voice_profiles import SpeakerStore

__all__ = ["Storage"]


@dataclass
class Storage:
    """The conversation store and the stores beside it, over one database."""

    store: ConversationStore
    speakers: SpeakerStore  # voice profiles
    tokens: TokenStore  # per-user API tokens
    summaries: DaySummaryStore  # the OMI cloud's day summaries
    audit: AuditLog  # who read, searched, changed or deleted what (written in batches)
    settings: UserSettingsStore  # what the OMI app set: language, onboarding, where the chat view starts
    facts: FactStore  # what conversations revealed about each user (OMI's "memories"), and their edits

    @classmethod
    async def open(cls, settings: Settings, *, queue: bool) -> Storage:
        """Migrate and open the database and load its encryption key; every change is queued for the sinks
        when ``queue``."""
        store = await ConversationStore.open(settings.database_url, sinks=settings.sinks if queue else ())
        try:
            await unlock(settings, store.engine)  # the encryption key, before anything reads what is stored
        except BaseException:
            await store.close()
            raise
        engine = store.engine
        audit = AuditLog(engine)
        audit.start()
        return cls(
            store,
            SpeakerStore(engine),
            TokenStore(engine),
            DaySummaryStore(engine),
            audit,
            UserSettingsStore(engine),
            FactStore(engine, sinks=store.sinks),
        )

    async def close(self) -> None:
        """Write the last audit entries and close the database."""
        await self.audit.close()
        await self.store.close()
