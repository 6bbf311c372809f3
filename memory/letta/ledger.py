"""The Letta passage ledger: which passage groups each agent holds, kept beside the conversations.

Letta dedupes nothing and its client retries POSTs, so the sink keeps its own record. A row is
written ``pending`` (committed) before a passage is inserted, and becomes ``stored`` with the
passage id once Letta answered. A ``pending`` row therefore means "perhaps inserted": the sink
settles it by looking up the group's ``grp:<key>`` tag in Letta before inserting again. The
unique ``(agent_id, key)`` index makes the pending row a claim, so two processes never insert
the same group at once.

An insert whose request timed out may still be carried out by Letta later, after it was
settled as missing and inserted again. Such groups are *watched* (rows keyed ``w:<key>``): the
sink looks their tag up again for a while and deletes any copy the ledger does not hold.
"""

from __future__ import annotations

import time

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from memory.store.models import LettaPassageRow

__all__ = ["Ledger", "LedgerEntry"]


class LedgerEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One passage group as the ledger knows it."""

    key: str
    passage_id: str | None
    state: str  # pending | stored
    updated_at: float


class Ledger:
    """Reads and writes ``letta_passages``; shares the conversation store's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def entries(self, agent_id: str, conversation_id: str) -> dict[str, LedgerEntry]:
        """The agent's groups of one conversation, by key."""
        query = select(LettaPassageRow).where(
            LettaPassageRow.agent_id == agent_id, LettaPassageRow.conversation_id == conversation_id
        )
        async with self._sessions() as session:
            return {
                r.key: LedgerEntry(key=r.key, passage_id=r.passage_id, state=r.state, updated_at=r.updated_at)
                for r in (await session.scalars(query)).all()
                if ":" not in r.key  # watches and notices are not passage groups
            }

    async def entry(self, agent_id: str, key: str) -> LedgerEntry | None:
        """What the ledger holds for group ``key`` of the agent."""
        query = select(LettaPassageRow).where(LettaPassageRow.agent_id == agent_id, LettaPassageRow.key == key)
        async with self._sessions() as session:
            r = await session.scalar(query)
            return (
                None
                if r is None
                else LedgerEntry(key=key, passage_id=r.passage_id, state=r.state, updated_at=r.updated_at)
            )

    async def watch(self, *, uid: str, agent_id: str, conversation_id: str, keys: list[str]) -> None:
        """Remember groups that were re-inserted while an earlier insert of theirs might still land."""
        now = time.time()
        async with self._sessions() as session, session.begin():
            for key in keys:
                await session.execute(
                    delete(LettaPassageRow).where(
                        LettaPassageRow.agent_id == agent_id, LettaPassageRow.key == f"w:{key}"
                    )
                )
                session.add(
                    LettaPassageRow(
                        uid=uid,
                        agent_id=agent_id,
                        conversation_id=conversation_id,
                        key=f"w:{key}",
                        passage_id=None,
                        state="watch",
                        updated_at=now,
                    )
                )

    async def watched(self) -> list[tuple[str, str, float]]:
        """Every watched group as ``(agent_id, key, since)``."""
        query = select(LettaPassageRow.agent_id, LettaPassageRow.key, LettaPassageRow.updated_at).where(
            LettaPassageRow.state == "watch"
        )
        async with self._sessions() as session:
            return [(a, k[2:], t) for a, k, t in (await session.execute(query)).all()]

    async def unwatch(self, agent_id: str, keys: list[str]) -> None:
        """Stop watching groups."""
        await self.forget(agent_id, [f"w:{k}" for k in keys])

    async def claim(self, *, uid: str, agent_id: str, conversation_id: str, keys: list[str]) -> bool:
        """Write ``pending`` rows for ``keys``; False (nothing written) if any is already claimed."""
        return await self.claim_many(uid=uid, agent_id=agent_id, keys={conversation_id: keys})

    async def claim_many(self, *, uid: str, agent_id: str, keys: dict[str, list[str]]) -> bool:
        """:meth:`claim` for several conversations (``{conversation_id: keys}``) in one transaction."""
        now = time.time()
        try:
            async with self._sessions() as session, session.begin():
                session.add_all(
                    LettaPassageRow(
                        uid=uid,
                        agent_id=agent_id,
                        conversation_id=conversation_id,
                        key=key,
                        passage_id=None,
                        state="pending",
                        updated_at=now,
                    )
                    for conversation_id, group in keys.items()
                    for key in group
                )
        except IntegrityError:
            return False
        return True

    async def stored(self, agent_id: str, passages: dict[str, str]) -> None:
        """Mark groups inserted: ``{key: passage_id}``."""
        now = time.time()
        async with self._sessions() as session, session.begin():
            for key, passage_id in passages.items():
                await session.execute(
                    update(LettaPassageRow)
                    .where(LettaPassageRow.agent_id == agent_id, LettaPassageRow.key == key)
                    .values(passage_id=passage_id, state="stored", updated_at=now)
                )

    async def forget_agent(self, agent_id: str) -> None:
        """Drop every row of an agent (it was deleted from Letta)."""
        async with self._sessions() as session, session.begin():
            await session.execute(delete(LettaPassageRow).where(LettaPassageRow.agent_id == agent_id))

    async def forget(self, agent_id: str, keys: list[str]) -> None:
        """Drop rows (the groups were deleted from Letta, or never inserted)."""
        if not keys:
            return
        async with self._sessions() as session, session.begin():
            await session.execute(
                delete(LettaPassageRow).where(LettaPassageRow.agent_id == agent_id, LettaPassageRow.key.in_(keys))
            )
