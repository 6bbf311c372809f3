"""An agent's core memory: the ``recent_conversations`` and ``known_facts`` blocks, rewritten from the store.

Each block is rewritten whole from what is stored now, never appended to: a fact that a later
one superseded, or that the user deleted, leaves the block when it is next written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from letta_client import AsyncLetta
from letta_client import NotFoundError as LettaNotFound

from core.errors import DeliveryError
from memory.letta.agents import RECENT_BLOCK, RECENT_BLOCK_CHARS
from memory.letta.letta_client import letta_errors
from memory.letta.passage_groups import recent_block

if TYPE_CHECKING:
    from memory.store.conversation_store import ConversationStore
    from memory.store.facts import Fact, FactStore

__all__ = ["FACTS_BLOCK", "FACTS_BLOCK_CHARS", "FactsBlock", "RecentConversations", "facts_block", "write_block"]

FACTS_BLOCK = "known_facts"
FACTS_BLOCK_CHARS = 5000


def facts_block(facts: Sequence[Fact], limit: int = FACTS_BLOCK_CHARS) -> str:
    """The user's current facts as block text, one line each, newest first, cut to ``limit`` characters."""
    head = "What I know about the wearer (from their conversations and their own notes):"
    lines = [head]
    size = len(head)
    for f in facts:
        line = f"- {f.content} [{f.category}]"
        if size + 1 + len(line) > limit:
            break
        lines.append(line)
        size += 1 + len(line)
    return "\n".join(lines) if len(lines) > 1 else f"{head}\n(nothing yet)"


async def write_block(client: AsyncLetta, agent: str, label: str, value: str, limit: int) -> None:
    """Set the agent's block ``label`` to ``value``, creating and attaching it if the agent has none."""
    try:
        async with letta_errors(f"updating the {label} block"):
            await client.agents.blocks.update(label, agent_id=agent, value=value)
    except DeliveryError as exc:
        if not isinstance(exc.__cause__, LettaNotFound):
            raise
        async with letta_errors(f"creating the {label} block"):
            block = await client.blocks.create(label=label, value=value, limit=limit)
            await client.agents.blocks.attach(block.id, agent_id=agent)


class RecentConversations:
    """The block that lists each user's latest conversations: when, with whom, how long, what about."""

    def __init__(self, client: AsyncLetta, store: ConversationStore, *, count: int = 10) -> None:
        self.client = client
        self.store = store
        self.recent_conversations = count

    async def refresh_recent(self, agent: str, uid: str) -> str:
        """Rewrite the agent's ``recent_conversations`` block from the store; returns its value."""
        value = recent_block(await self.store.recent(uid, self.recent_conversations), RECENT_BLOCK_CHARS)
        await write_block(self.client, agent, RECENT_BLOCK, value, RECENT_BLOCK_CHARS)
        return value


class FactsBlock:
    """The block of the user's current facts (superseded and removed ones leave it)."""

    def __init__(self, client: AsyncLetta, facts: FactStore) -> None:
        self.client = client
        self.facts = facts

    async def refresh_facts(self, agent: str, uid: str) -> str:
        """Rewrite the agent's ``known_facts`` block from the fact store; returns its value."""
        value = facts_block(await self.facts.list(uid, limit=500))
        await write_block(self.client, agent, FACTS_BLOCK, value, FACTS_BLOCK_CHARS)
        return value
