"""Forgetting on purpose: the retention purge (``RETENTION_DAYS``) and erasing everything of one user.

Both delete conversations as ``DELETE /v1/conversations/{id}`` does, through
:meth:`~memory.store.conversations.ConversationManager.forget`: the conversation and its turns go in
one transaction with a ``deleted`` outbox record per sink. The memory index then drops the
turns, and the Letta sink deletes the agent's passages tagged ``conv:<id>`` and rewrites its
``recent_conversations`` block from what is left, exactly once and after whatever the user had
queued before. The outbox gauges of ``/metrics`` show that delivery draining.

Erasing a user also deletes what is theirs but no conversation: voice profiles, API tokens, day
summaries, their offline uploads (with any audio of them still kept), and the live state of a
conversation in progress (its speaker tracking, and speech kept in memory for the refinement pass).
Their Letta agent stays, holding none of it. Voice
profiles keep an embedding, never audio, and an enrollment upload is deleted once embedded, so
no stored audio is left; the retention purge also drops speech kept in memory that is older
than the retention. Only counts are logged, never text.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from core.errors import NotFoundError
from memory.store.conversations import ConversationManager
from memory.store.day_summaries import DaySummaryStore
from memory.store.facts import FactStore
from memory.store.sealed_files import SealedFiles
from memory.store.sync_jobs import SYNC_DIR, SyncJobStore
from memory.store.tokens import TokenStore
from memory.store.voice_profiles import SpeakerStore

if TYPE_CHECKING:
    from core.metrics import Metrics
    from ingest.identity import LiveSpeakers
    from ingest.refine import KeptSpeech
    from memory.store.conversation_store import ConversationStore

__all__ = ["DAY_S", "Forgotten", "Retention"]

log = logging.getLogger(__name__)

DAY_S = 86_400.0


class Forgotten(msgspec.Struct, kw_only=True):
    """What a purge or an erasure deleted, and the outbox records that carry it to the sinks."""

    conversations: int = 0
    turns: int = 0
    speakers: int = 0
    tokens: int = 0
    day_summaries: int = 0
    records: list[int] = msgspec.field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """The counts as the API and the CLI report them; ``deliveries_queued`` counts the outbox records."""
        return {
            "conversations": self.conversations,
            "turns": self.turns,
            "speakers": self.speakers,
            "tokens": self.tokens,
            "day_summaries": self.day_summaries,
            "deliveries_queued": len(self.records),
        }


class Retention:
    """Deletes conversations older than ``days`` every ``interval_s``, and erases users on request.

    ``days`` 0 keeps conversations forever: :meth:`start` then runs nothing.
    """

    def __init__(
        self,
        conversations: ConversationManager,
        speakers: SpeakerStore,
        tokens: TokenStore,
        summaries: DaySummaryStore,
        *,
        days: int = 0,
        interval_s: float = 3600.0,
        live: LiveSpeakers | None = None,
        kept: KeptSpeech | None = None,
        metrics: Metrics | None = None,
        uploads: SealedFiles | None = None,
    ) -> None:
        self.conversations = conversations
        self.speakers = speakers
        self.tokens = tokens
        self.summaries = summaries
        self.days = days
        self.interval_s = interval_s
        self.live = live
        self.kept = kept
        self.metrics = metrics
        self.uploads = uploads  # the offline recordings waiting under DATA_DIR/sync
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def over(cls, store: ConversationStore, data_dir: Path, *, days: int = 0) -> Retention:
        """For a command-line tool: the stores over ``store``'s database and ``data_dir``, and no live state."""
        engine = store.engine
        return cls(
            ConversationManager(store),
            SpeakerStore(engine),
            TokenStore(engine),
            DaySummaryStore(engine),
            days=days,
            uploads=SealedFiles(data_dir / SYNC_DIR),
        )

    def start(self) -> None:
        """Purge now, then every ``interval_s``, in the background (nothing when ``days`` is 0)."""
        if self.days > 0 and self._task is None:
            self._task = asyncio.create_task(self._purge_forever(), name="retention")

    async def stop(self) -> None:
        """Stop purging."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def cutoff(self, days: int | None = None, now: float | None = None) -> float | None:
        """The epoch second before which finished conversations are deleted; None when they are kept forever."""
        days = self.days if days is None else days
        if days <= 0:
            return None
        return (time.time() if now is None else now) - days * DAY_S

    async def expired(self, *, days: int | None = None, now: float | None = None) -> list[tuple[str, str, int]]:
        """``(uid, id, turns)`` of the completed conversations that finished over ``days`` (default: the
        retention) days before ``now``, oldest first."""
        cutoff = self.cutoff(days, now)
        if cutoff is None:
            return []
        return await self.conversations.store.keys(before=cutoff, include_in_progress=False)

    async def purge(self, *, days: int | None = None, now: float | None = None) -> Forgotten:
        """Delete every completed conversation that finished over ``days`` (default: the retention) days ago.

        Conversations in progress are left to close first. Voice profiles, tokens and day
        summaries are not conversations and stay.
        """
        done = Forgotten()
        cutoff = self.cutoff(days, now)
        if cutoff is None:
            return done
        for uid, conversation_id, turns in await self.conversations.store.keys(
            before=cutoff, include_in_progress=False
        ):
            await self._forget(done, uid, conversation_id, turns)
        if self.kept is not None:
            self.kept.expire(cutoff)
        if done.conversations:
            log.info(
                "retention: deleted %d conversation(s) with %d turn(s) that finished over %d day(s) ago",
                done.conversations,
                done.turns,
                self.days if days is None else days,
            )
        if self.metrics is not None:
            self.metrics.inc("retention_deleted_conversations_total", done.conversations)
        return done

    async def erase(self, uid: str, *, keep_in_progress: bool = False) -> Forgotten:
        """Delete everything of ``uid``'s: every conversation, voice profile, API token and day summary, and
        the live state of their conversation in progress.

        ``keep_in_progress`` leaves the conversation in progress alone (and its live state): for a
        tool running beside a service that holds it in memory.
        """
        done = Forgotten()
        store = self.conversations.store
        for _, conversation_id, turns in await store.keys(uid=uid, include_in_progress=not keep_in_progress):
            await self._forget(done, uid, conversation_id, turns)
        done.speakers = await self.speakers.delete_all(uid)
        done.tokens = await self.tokens.delete_all(uid)
        done.day_summaries = await self.summaries.delete_all(uid)
        await FactStore(store.engine).delete_all(uid)  # what conversations revealed about them
        uploads = await SyncJobStore(store.engine).delete_all(uid)
        if self.uploads is not None:
            for content_id in uploads:
                await asyncio.to_thread(self.uploads.remove, content_id)
        if not keep_in_progress:
            if self.live is not None:
                self.live.forget(uid)
            if self.kept is not None:
                self.kept.forget(uid, math.inf)
        log.info(
            "erased uid %s: %d conversation(s) with %d turn(s), %d voice profile(s), %d API token(s), "
            "%d day summary(ies); %d deletion(s) queued for delivery",
            uid,
            done.conversations,
            done.turns,
            done.speakers,
            done.tokens,
            done.day_summaries,
            len(done.records),
        )
        if self.metrics is not None:
            self.metrics.inc("erasures_total")
        return done

    async def _forget(self, done: Forgotten, uid: str, conversation_id: str, turns: int) -> None:
        try:
            records = await self.conversations.forget(uid, conversation_id)
        except NotFoundError:
            return  # deleted meanwhile: by its owner, or by another purge
        done.conversations += 1
        done.turns += turns
        done.records += records

    async def _purge_forever(self) -> None:
        while True:
            try:
                await self.purge()
            except Exception:
                log.exception("the retention purge failed; trying again in %.0f s", self.interval_s)
            await asyncio.sleep(self.interval_s)
