"""An agent's core memory: the ``recent_conversations`` and ``facts_about_user`` blocks, rewritten from the store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from letta_client import AsyncLetta
from letta_client import NotFoundError as LettaNotFound

from core.errors import DeliveryError
from memory.letta.agents import RECENT_BLOCK, RECENT_BLOCK_CHARS
from memory.letta.letta_client import letta_errors
from memory.letta.passage_groups import recent_block
from memory.store.facts import FactStore

if TYPE_CHECKING:
    from memory.store.conversation_store import ConversationStore
    from memory.store.facts import Fact

__all__ = ["FACTS_BLOCK", "FACTS_BLOCK_CHARS", "RecentConversations", "facts_block"]

FACTS_BLOCK = "facts_about_user"
FACTS_BLOCK_CHARS = 5000


def facts_block(facts: list[Fact], limit: int = FACTS_BLOCK_CHARS) -> str:
    """The block's value: one line per fact, newest first, as many as fit in ``limit``."""
    lines = ["Facts about the user, from their conversations and from what they wrote (newest first):"]
    used = len(lines[0])
    for fact in facts:
        line = f"- {fact.content}"
        if used + 1 + len(line) > limit:
            break
        lines.append(line)
        used += 1 + len(line)
    if len(lines) == 1:
        lines.append("- (none yet)")
    return "\n".join(lines)


class RecentConversations:
    """The block that lists each user's latest conversations: when, with whom, how long, what about."""

    def __init__(self, client: AsyncLetta, store: ConversationStore, *, count: int = 10) -> None:
        self.client = client
        self.store = store
        self.recent_conversations = count
        self.facts = FactStore(store.engine)

    async def refresh_recent(self, agent: str, uid: str) -> str:
        """Rewrite the agent's ``recent_conversations`` block from the store; returns its value."""
        value = recent_block(await self.store.recent(uid, self.recent_conversations), RECENT_BLOCK_CHARS)
        await self._write(agent, RECENT_BLOCK, value, RECENT_BLOCK_CHARS)
        return value

    async def refresh_facts(self, agent: str, uid: str) -> str:
        """Rewrite the agent's ``facts_about_user`` block from the user's current facts; returns its value."""
        value = facts_block(await self.facts.list(uid, limit=200))
        await self._write(agent, FACTS_BLOCK, value, FACTS_BLOCK_CHARS)
        return value

    async def _write(self, agent: str, label: str, value: str, limit: int) -> None:
        """Set the block ``label`` of ``agent``, attaching a new one where the agent has none."""
        try:
            async with letta_errors(f"updating the {label} block"):
                await self.client.agents.blocks.update(label, agent_id=agent, value=value)
        except DeliveryError as exc:
            if not isinstance(exc.__cause__, LettaNotFound):
                raise
            async with letta_errors(f"creating the {label} block"):
                block = await self.client.blocks.create(label=label, value=value, limit=limit)
                await self.client.agents.blocks.attach(block.id, agent_id=agent)
