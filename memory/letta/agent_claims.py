"""Claims on creating a user's Letta agent, in the database every worker shares (``letta_agent_claims``).

Finding a user's agent and creating it when Letta has none is two requests; two workers doing
it at once would both find none and both create one. So a worker that found none first inserts
the user's claim row. The primary key lets one insert succeed: that worker looks in Letta once
more (another may have finished meanwhile) and creates the agent, then writes its id into the
row. The others see the row and wait for the id. A claim whose owner never wrote an id (it
died, or its create request was lost) is taken over once it is older than ``stale_s``, or at once
when its owner was a process of this host that is gone (a worker killed and restarted); a row
whose agent Letta no longer lists (deleted, or another Letta server) is taken over at once.

It works alike on SQLite and PostgreSQL, so it needs no Redis.
"""

from __future__ import annotations

import os
import re
import socket
import time

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from memory.store.models import AgentClaimRow

__all__ = ["AgentClaim", "AgentClaims", "owner_gone"]

# The end of an owner's name, as ``memory.redis_state.worker_id`` writes it: host, pid, a random suffix.
_OWNER = re.compile(r"(?:^|:)(?P<host>[^:]+)-(?P<pid>\d+)-[0-9a-f]{6}$")


def owner_gone(owner: str) -> bool:
    """Whether ``owner`` was a process of this host that no longer runs (its claim can be taken over now).

    False when it cannot be told: another host, a name of another shape, or a pid that runs again.
    """
    match = _OWNER.search(owner)
    if match is None or match["host"] != socket.gethostname():
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class AgentClaim(msgspec.Struct, frozen=True, kw_only=True):
    """A user's claim row as read."""

    uid: str
    owner: str
    agent_id: str | None
    claimed_at: float


def _claim(row: AgentClaimRow) -> AgentClaim:
    return AgentClaim(uid=row.uid, owner=row.owner, agent_id=row.agent_id, claimed_at=row.claimed_at)


class AgentClaims:
    """Reads and writes ``letta_agent_claims`` as worker ``owner``; shares the conversation store's engine."""

    def __init__(self, engine: AsyncEngine, owner: str) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.owner = owner[:64]

    async def get(self, uid: str) -> AgentClaim | None:
        """The user's claim, if any."""
        async with self._sessions() as session:
            row = await session.get(AgentClaimRow, uid)
            return None if row is None else _claim(row)

    async def all(self) -> dict[str, AgentClaim]:
        """Every claim, by uid."""
        async with self._sessions() as session:
            return {r.uid: _claim(r) for r in (await session.scalars(select(AgentClaimRow))).all()}

    async def claim(self, uid: str, *, now: float | None = None) -> bool:
        """Insert the user's claim as ours; False if there is one already."""
        stamp = time.time() if now is None else now
        try:
            async with self._sessions() as session, session.begin():
                session.add(AgentClaimRow(uid=uid, owner=self.owner, agent_id=None, claimed_at=stamp))
        except IntegrityError:
            return False
        return True

    async def take_over(self, seen: AgentClaim, *, now: float | None = None) -> bool:
        """Make ``seen`` (stale, or naming an agent that is gone) ours; False if it changed since it was read."""
        agent = AgentClaimRow.agent_id.is_(None) if seen.agent_id is None else AgentClaimRow.agent_id == seen.agent_id
        query = (
            update(AgentClaimRow)
            .where(
                AgentClaimRow.uid == seen.uid,
                AgentClaimRow.owner == seen.owner,
                AgentClaimRow.claimed_at == seen.claimed_at,
                agent,
            )
            .values(owner=self.owner, agent_id=None, claimed_at=time.time() if now is None else now)
        )
        async with self._sessions() as session, session.begin():
            return bool((await session.execute(query)).rowcount)  # type: ignore[attr-defined]

    async def settle(self, uid: str, agent_id: str) -> None:
        """Write the agent of our claim."""
        query = update(AgentClaimRow).where(AgentClaimRow.uid == uid, AgentClaimRow.owner == self.owner)
        async with self._sessions() as session, session.begin():
            await session.execute(query.values(agent_id=agent_id))

    async def release(self, uid: str) -> None:
        """Drop our claim that names no agent yet (our create surely never reached Letta)."""
        query = delete(AgentClaimRow).where(
            AgentClaimRow.uid == uid, AgentClaimRow.owner == self.owner, AgentClaimRow.agent_id.is_(None)
        )
        async with self._sessions() as session, session.begin():
            await session.execute(query)

    async def record(self, uid: str, agent_id: str) -> None:
        """Make ``agent_id`` the user's agent in the claims (an agent found in Letta, or the one kept by a merge)."""
        for _ in range(2):  # a concurrent first insert: then update the row it wrote
            try:
                async with self._sessions() as session, session.begin():
                    row = await session.get(AgentClaimRow, uid)
                    if row is None:
                        session.add(AgentClaimRow(uid=uid, owner=self.owner, agent_id=agent_id, claimed_at=time.time()))
                    elif row.agent_id != agent_id:
                        row.agent_id = agent_id
                        row.owner = self.owner
                return
            except IntegrityError:
                continue
