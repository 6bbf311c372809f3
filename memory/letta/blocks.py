"""An agent's core memory: the ``recent_conversations`` block, rewritten from the store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from letta_client import AsyncLetta
from letta_client import NotFoundError as LettaNotFound

from core.errors import DeliveryError
from memory.letta.agents import RECENT_BLOCK, RECENT_BLOCK_CHARS
from memory.letta.letta_client import letta_errors
from memory.letta.passage_groups import recent_block

if TYPE_CHECKING:
    from memory.store.conversation_store import ConversationStore

__all__ = ["RecentConversations"]


class RecentConversations:
    """The block that lists each user's latest conversations: when, with whom, how long, what about."""

    def __init__(self, client: AsyncLetta, store: ConversationStore, *, count: int = 10) -> None:
        self.client = client
        self.store = store
        self.recent_conversations = count

    async def refresh_recent(self, agent: str, uid: str) -> str:
        """Rewrite the agent's ``recent_conversations`` block from the store; returns its value."""
        value = recent_block(await self.store.recent(uid, self.recent_conversations), RECENT_BLOCK_CHARS)
        try:
            async with letta_errors("updating the recent_conversations block"):
                await self.client.agents.blocks.update(RECENT_BLOCK, agent_id=agent, value=value)
        except DeliveryError as exc:
            if not isinstance(exc.__cause__, LettaNotFound):
                raise
            async with letta_errors("creating the recent_conversations block"):
                block = await self.client.blocks.create(label=RECENT_BLOCK, value=value, limit=RECENT_BLOCK_CHARS)
                await self.client.agents.blocks.attach(block.id, agent_id=agent)
        return value
