"""The Letta sink: each user's turns as archival passages of their agent, and its memory blocks.

It composes the three parts of a Letta agent it writes: the agent itself
(:class:`~memory.letta.agents.AgentRegistry`, shared with chat), its archival memory
(:class:`~memory.letta.archival.ArchivalMemory`) and its core memory blocks
(:class:`~memory.letta.blocks.RecentConversations` and :class:`~memory.letta.blocks.FactsBlock`).
Writes to one agent are serialized.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from letta_client import NotFoundError as LettaNotFound

from core.errors import DeliveryError
from core.segments import TranscriptSegment
from memory.delivery.deliverer import Delivery, Sink
from memory.letta.agents import AgentRegistry
from memory.letta.archival import ArchivalMemory
from memory.letta.blocks import FactsBlock, RecentConversations
from memory.letta.ledger import Ledger
from memory.letta.letta_client import letta_errors
from memory.letta.passage_groups import summary_line
from memory.store.facts import FactStore

if TYPE_CHECKING:
    from letta_client import AsyncLetta

    from core.conversation import Conversation
    from memory.memory_settings import LettaSettings
    from memory.store.conversation_store import ConversationStore
    from memory.store.outbox import OutboxRecord

__all__ = ["LettaSink"]


class LettaSink(Sink):
    """Delivers each user's conversations to their Letta agent (see the module docstring)."""

    name = "letta"

    def __init__(
        self,
        agents: AgentRegistry,
        store: ConversationStore,
        *,
        passage_max_chars: int = 1500,
        recent_conversations: int = 10,
        notify_on_close: bool = False,
        stale_s: float = 60.0,
        watch_s: float = 3600.0,
    ) -> None:
        self.agents = agents
        self.store = store
        self.archive = ArchivalMemory(
            agents.client,
            Ledger(store.engine),
            agents.write_lock,
            passage_max_chars=passage_max_chars,
            stale_s=stale_s,
            watch_s=watch_s,
        )
        self.blocks = RecentConversations(agents.client, store, count=recent_conversations)
        self.facts = FactsBlock(agents.client, FactStore(store.engine))
        self.notify_on_close = notify_on_close

    @classmethod
    def from_settings(cls, letta: LettaSettings, store: ConversationStore, agents: AgentRegistry) -> LettaSink:
        """The sink of the configured Letta server, writing to the agents of ``agents``."""
        return cls(
            agents,
            store,
            passage_max_chars=letta.passage_max_chars,
            recent_conversations=letta.recent_conversations,
            notify_on_close=letta.notify_on_close,
            stale_s=2 * letta.timeout_s,
        )

    @property
    def client(self) -> AsyncLetta:
        """The Letta client."""
        return self.agents.client

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.agents.close()

    async def tick(self) -> None:
        """Every few seconds, look for late copies of re-inserted passages and delete them."""
        await self.archive.tick()

    async def deliver(
        self, record: OutboxRecord, conversation: Conversation | None, turns: list[TranscriptSegment]
    ) -> None:
        await self.deliver_batch([Delivery(record, conversation, turns)])

    async def deliver_batch(self, items: list[Delivery]) -> None:
        """Apply a user's records together: one insert request for all their missing groups, one block update."""
        uid = items[0].record.uid
        agent = await self.agents.agent_for(uid)
        try:
            await self._apply(agent, uid, items)
        except DeliveryError as exc:
            if isinstance(exc.__cause__, LettaNotFound):  # the agent is gone (deleted, merged): find it again
                self.agents.forget(uid)
            raise

    async def _apply(self, agent: str, uid: str, items: list[Delivery]) -> None:
        states: dict[str, Conversation | None] = {}  # conversations to sync, as stored now
        deleted: list[str] = []
        closed: list[Conversation] = []
        facts = False
        for record, conversation, _ in items:
            cid = record.conversation_id
            if record.action == "facts":
                facts = True
            elif record.action == "deleted":
                deleted.append(cid)
                states[cid] = None
            elif record.action == "turns" and cid not in deleted:
                states[cid] = conversation
            elif record.action == "closed" and conversation is not None:
                closed.append(conversation)
        async with self.agents.write_lock(agent):
            if states:
                await self.archive.sync_many(agent, uid, states)
                if any(c is not None for c in states.values()):
                    await self.agents.keep_tools_token(agent, uid)
            for cid in deleted:
                await self.archive.sweep(agent, cid)
            if closed or deleted:
                await self.blocks.refresh_recent(agent, uid)
            if closed or facts:  # what the conversation revealed (if understood first), or the user's edits
                await self.facts.refresh_facts(agent, uid)
            if self.notify_on_close:
                for conversation in closed:
                    await self._notify(agent, uid, conversation)

    async def refresh_facts(self, uid: str) -> str:
        """Rewrite the user's agent's ``known_facts`` block (their facts changed); returns its value."""
        agent = await self.agents.agent_for(uid)
        async with self.agents.write_lock(agent):
            return await self.facts.refresh_facts(agent, uid)

    async def _notify(self, agent: str, uid: str, conversation: Conversation) -> None:
        """Tell the agent a conversation ended, at most once (a claimed ledger row marks it sent)."""
        key = f"notify:{conversation.id}"[:64]
        if not await self.archive.ledger.claim(uid=uid, agent_id=agent, conversation_id=conversation.id, keys=[key]):
            return
        text = f"[automated note from omi-letta] A conversation just ended: {summary_line(conversation)[2:]}"
        async with self.agents.message_lock(agent), letta_errors("notifying the agent"):
            await self.agents.client.agents.messages.create(
                agent, messages=[{"role": "user", "content": text}], timeout=max(120.0, self.archive.stale_s)
            )
        await self.archive.ledger.stored(agent, {key: "message"})
