"""When a conversation closes: its ``structured`` summary stored, its facts applied, both made searchable.

:class:`Understanding` runs :class:`~memory.understand.structure.Structurer` on a stored
conversation, stores the summary in the conversation (unless the OMI cloud sent one), applies
the facts to the :class:`~memory.store.facts.FactStore` (added, or superseding the fact they
replace), and indexes the summary and the user's current facts as documents beside the turns:
the summary as turn ``<conversation>#summary`` of conversation ``<conversation>#understood``
(apart from its turns, so it lends them no words), each fact as turn ``fact:<id>`` of
conversation ``facts``. ``on_facts(uid)`` is awaited when the user's facts changed (the app
rewrites the Letta agent's facts block there). With Letta delivery the conversation is queued for
the Letta sink again, which adds the summary passage and the title to the agent's memory.

Usage::

    understanding = Understanding(store, FactStore(store.engine), Structurer(url, model), search)
    await understanding.conversation("alice", "c1")
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from core.errors import NotFoundError
from memory.search.hybrid import MemorySearch, Turn
from memory.store.facts import Fact, FactStore
from memory.understand.structure import Structurer, Understood

if TYPE_CHECKING:
    from core.conversation import Conversation
    from memory.store.conversation_store import ConversationStore

__all__ = ["FACTS_CONVERSATION", "SUMMARY_SPEAKER", "Understanding", "fact_turn", "summary_document", "summary_turn"]

log = logging.getLogger(__name__)

FACTS_CONVERSATION = "facts"
SUMMARY_SPEAKER = ""  # documents have no speaker: a question that names a person is not pulled to them


def summary_document(conversation_id: str) -> str:
    """The index's conversation id of a conversation's summary document."""
    return f"{conversation_id}#understood"


def summary_turn(uid: str, conversation: Conversation, structured: dict[str, Any]) -> Turn | None:
    """The conversation's summary (title, overview, action items) as a searchable document."""
    title = str(structured.get("title") or "").strip().rstrip(".")
    overview = str(structured.get("overview") or "").strip()
    items = structured.get("action_items") or []
    actions = [str(a.get("description", "")) if isinstance(a, dict) else str(a) for a in items]
    text = " ".join(p for p in [f"{title}." if title else "", overview, *actions] if p)
    if not text:
        return None
    return Turn(
        uid=uid,
        turn_id=f"{conversation.id}#summary",
        conversation_id=summary_document(conversation.id),
        speaker=SUMMARY_SPEAKER,
        is_user=False,
        start=conversation.started_at,
        end=conversation.finished_at,
        text=text,
    )


def fact_turn(fact: Fact, at: float | None = None) -> Turn:
    """A current fact about the user as a searchable document, dated ``at`` (default: when it was
    written): the time of the conversation it came from, so that it leaves the search's sense of
    "last May" (counted from the user's latest conversation) alone."""
    when = fact.created_at if at is None else at
    return Turn(
        uid=fact.uid,
        turn_id=f"fact:{fact.id}",
        conversation_id=FACTS_CONVERSATION,
        speaker=SUMMARY_SPEAKER,
        is_user=False,
        start=when,
        end=when,
        text=fact.content,
    )


class Understanding:
    """Understands closed conversations; see the module docstring."""

    def __init__(
        self,
        store: ConversationStore,
        facts: FactStore,
        structurer: Structurer,
        search: MemorySearch | None = None,
        *,
        on_facts: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self.store = store
        self.facts = facts
        self.structurer = structurer
        self.search = search
        self.on_facts = on_facts

    async def conversation(self, uid: str, conversation_id: str, *, force: bool = False) -> Understood | None:
        """Understand one stored conversation; None if it is gone, empty, or (unless ``force``) has a
        summary already (one the OMI cloud sent, or an earlier run's)."""
        try:
            conversation = await self.store.get(uid, conversation_id)
        except NotFoundError:
            return None
        if conversation.discarded or not any(s.text.strip() for s in conversation.segments):
            return None
        if not force and str((conversation.structured or {}).get("title") or "").strip():
            return None
        current = await self.facts.list(uid, limit=200)
        understood = await self.structurer.understand(conversation, current)
        if not await self.store.set_structured(uid, conversation_id, understood.structured):
            return None
        if (
            "letta" in self.store.sinks
        ):  # the agent gets the summary as a passage, and its title in recent_conversations
            await self.store.requeue(uid, conversation_id, ("letta",))
        changed = await self.facts.apply(uid, conversation_id, understood.facts)
        if self.search is not None:
            doc = summary_turn(uid, conversation, understood.structured)
            if doc is not None:
                await self.search.add([doc])
            gone = [f.id for f in changed["superseded"]]
            await self.index_facts(uid, changed["added"], gone=gone, at=conversation.started_at)
        if (changed["added"] or changed["superseded"]) and self.on_facts is not None:
            try:
                await self.on_facts(uid)
            except Exception as exc:  # the agent catches up when its sink next refreshes the block
                log.warning("could not update the agent's facts block for %s: %s", uid, exc)
        return understood

    async def index_facts(
        self, uid: str, facts: Sequence[Fact], gone: Sequence[str] = (), *, at: float | None = None
    ) -> None:
        """Put ``facts`` (new or edited) into the search index and take ``gone`` (fact ids) out."""
        if self.search is None:
            return
        if gone:
            await self.search.delete(uid, ids=[f"fact:{i}" for i in gone])
        await self.search.add([fact_turn(f, at) for f in facts if f.current])

    async def reindex_facts(self, uid: str) -> None:
        """The user edited their facts: the documents of those they wrote or rewrote follow, and those
        they removed (or that were superseded) leave the index."""
        everything = await self.facts.list(uid, limit=100_000, include_old=True)
        gone = [f.id for f in everything if not f.current]
        await self.index_facts(uid, [f for f in everything if f.current and (f.manual or f.edited)], gone)

    async def forget(self, uid: str, conversation_id: str) -> None:
        """A conversation was deleted: its summary document leaves the index, and, once the user has
        no facts left (they were erased), so do the facts' documents."""
        if self.search is None:
            return
        await self.search.delete(uid, conversation_id=summary_document(conversation_id))
        if not await self.facts.list(uid, limit=1):
            await self.search.delete(uid, conversation_id=FACTS_CONVERSATION)
