"""An agent's archival memory: each conversation's turns as passages, reconciled with the ledger.

For every conversation the sink hands over, :meth:`ArchivalMemory.sync_many` groups its turns as
they are stored now (:func:`~memory.letta.passage_groups.group_turns`), compares the groups'
keys with the ledger, inserts the missing groups and deletes the stale ones. Delivering a record
twice therefore changes nothing, an edited or relabelled turn rewrites only its group, and a
deleted conversation leaves no passage behind. Inserts are claimed in the ledger first (see
:mod:`memory.letta.ledger`), so a crash or a lost reply never yields a second copy: a claim
that outlived ``stale_s`` is settled by looking the group's tag up in Letta. A request that timed
out can still be carried out by Letta after that, so a group inserted again is watched for a
while (:meth:`ArchivalMemory.tick`) and a late copy is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from letta_client import AsyncLetta
from letta_client import NotFoundError as LettaNotFound

from core.errors import DeliveryError
from memory.letta.letta_client import letta_errors, unsent
from memory.letta.passage_groups import PassageGroup, group_turns, summary_group

if TYPE_CHECKING:
    from core.conversation import Conversation
    from memory.letta.ledger import Ledger

__all__ = ["ArchivalMemory"]

log = logging.getLogger(__name__)

BATCH = 100  # passages per insert request
WATCH_EVERY_S = 3.0  # how often watched groups are looked up again


def passages_of(conversation: Conversation, max_chars: int) -> list[PassageGroup]:
    """What the agent holds of a conversation: its turn groups, and its summary once it has one."""
    summary = summary_group(conversation)
    return [*group_turns(conversation, max_chars), *([summary] if summary is not None else [])]


class ArchivalMemory:
    """The passages of every agent, kept equal to the stored conversations (see the module docstring)."""

    def __init__(
        self,
        client: AsyncLetta,
        ledger: Ledger,
        write_lock: Callable[[str], asyncio.Lock],
        *,
        passage_max_chars: int = 1500,
        stale_s: float = 60.0,
        watch_s: float = 3600.0,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.write_lock = write_lock
        self.passage_max_chars = passage_max_chars
        self.stale_s = stale_s
        self.watch_s = watch_s  # how long a re-inserted group is watched for a late copy
        self._archives: dict[str, str] = {}
        self._next_watch = 0.0

    async def sync_many(self, agent: str, uid: str, conversations: dict[str, Conversation | None]) -> int:
        """Make the agent hold exactly these conversations' current passage groups (``None``: deleted).

        One insert request carries every missing group. Returns how many were inserted.

        Raises:
            DeliveryError: Letta failed, or another process is inserting these groups right now.
        """
        missing: dict[str, list[PassageGroup]] = {}
        stale: dict[str, str] = {}
        for cid, conversation in conversations.items():
            desired = {g.key: g for g in passages_of(conversation, self.passage_max_chars)} if conversation else {}
            known = await self.ledger.entries(agent, cid)
            stored = {k: e.passage_id for k, e in known.items() if e.state == "stored" and e.passage_id}
            pending = [k for k, e in known.items() if e.state == "pending"]
            if pending:
                young = [k for k in pending if time.time() - known[k].updated_at < self.stale_s]
                if young:
                    raise DeliveryError(
                        f"{len(young)} passage(s) of a conversation may still be in flight; retrying", transient=True
                    )
                stored.update(await self._settle(agent, uid, cid, pending))
            missing[cid] = [g for k, g in desired.items() if k not in stored]
            stale.update({k: pid for k, pid in stored.items() if k not in desired})
        claims = {cid: [g.key for g in groups] for cid, groups in missing.items() if groups}
        if claims:
            if not await self.ledger.claim_many(uid=uid, agent_id=agent, keys=claims):
                raise DeliveryError(
                    "another process is inserting passages of this conversation; retrying", transient=True
                )
            try:
                inserted = await self.insert(agent, [g for groups in missing.values() for g in groups])
            except DeliveryError as exc:
                if unsent(exc):
                    await self.ledger.forget(agent, [k for keys in claims.values() for k in keys])
                raise
            await self.ledger.stored(agent, inserted)
        for key, passage_id in stale.items():
            await self.delete_passage(agent, passage_id)
            await self.ledger.forget(agent, [key])
        return sum(len(keys) for keys in claims.values())

    async def _settle(self, agent: str, uid: str, conversation_id: str, keys: list[str]) -> dict[str, str]:
        """Resolve claims a crash or a lost reply left behind: keep what Letta has, forget the rest."""
        found: dict[str, list[str]] = defaultdict(list)
        for i in range(0, len(keys), 50):
            tags = [f"grp:{k}" for k in keys[i : i + 50]]
            async with letta_errors("looking up passages by tag"):
                hits = await self.client.passages.search(agent_id=agent, tags=tags, tag_match_mode="any", limit=100)
            for hit in hits:
                for tag in hit.passage.tags or []:
                    if tag.startswith("grp:") and hit.passage.id:
                        found[tag[4:]].append(hit.passage.id)
        settled: dict[str, str] = {}
        for key in keys:
            ids = sorted(set(found.get(key, [])))
            if ids:
                settled[key] = ids[0]
                for extra in ids[1:]:  # two late inserts landed: keep one
                    await self.delete_passage(agent, extra)
        await self.ledger.stored(agent, settled)
        missing = [k for k in keys if k not in settled]
        await self.ledger.forget(agent, missing)
        if missing:  # they will be inserted again; an earlier request of theirs may still land
            await self.ledger.watch(uid=uid, agent_id=agent, conversation_id=conversation_id, keys=missing)
            self._next_watch = 0.0
        log.info("settled %d unconfirmed passage insert(s): %d were in Letta", len(keys), len(settled))
        return settled

    async def tick(self) -> None:
        """Every few seconds, look for late copies of watched groups and delete them."""
        if time.monotonic() < self._next_watch:
            return
        self._next_watch = time.monotonic() + WATCH_EVERY_S
        watched = await self.ledger.watched()
        by_agent: dict[str, list[str]] = defaultdict(list)
        for agent, key, since in watched:
            if time.time() - since > self.watch_s:
                await self.ledger.unwatch(agent, [key])
            else:
                by_agent[agent].append(key)
        for agent, keys in by_agent.items():
            async with self.write_lock(agent):
                await self._dedupe(agent, keys)

    async def _dedupe(self, agent: str, keys: list[str]) -> int:
        """Delete every passage of groups ``keys`` but the one the ledger holds; how many were deleted."""
        deleted = 0
        for i in range(0, len(keys), 50):
            chunk = keys[i : i + 50]
            async with letta_errors("looking up passages by tag"):
                hits = await self.client.passages.search(
                    agent_id=agent, tags=[f"grp:{k}" for k in chunk], tag_match_mode="any", limit=100
                )
            for hit in hits:
                key = next((t[4:] for t in hit.passage.tags or [] if t.startswith("grp:")), None)
                if key is None or not hit.passage.id:
                    continue
                entry = await self.ledger.entry(agent, key)
                if entry is not None and entry.state == "pending":
                    continue  # being inserted again: settling sorts it out
                if entry is None or hit.passage.id != entry.passage_id:
                    await self.delete_passage(agent, hit.passage.id)
                    deleted += 1
        if deleted:
            log.warning("deleted %d late duplicate passage(s) of agent %s", deleted, agent)
        return deleted

    async def insert(self, agent: str, groups: list[PassageGroup]) -> dict[str, str]:
        """Insert groups; ``{key: passage_id}``. Many at once go through the agent's archive in one request."""
        out: dict[str, str] = {}
        archive = self._archives.get(agent) or await self._archive(agent)
        if archive is None or len(groups) == 1:
            first, groups = groups[0], groups[1:]
            async with letta_errors("inserting a passage"):
                created = await self.client.agents.passages.create(
                    agent, text=first.text, created_at=first.created_at, tags=first.tags
                )
            if not created or not created[0].id:
                raise DeliveryError("Letta's insert returned no passage")
            out[first.key] = created[0].id
            if groups:
                archive = await self._archive(agent)
        for i in range(0, len(groups), BATCH):
            chunk = groups[i : i + BATCH]
            assert archive is not None
            async with letta_errors("inserting passages"):
                created_many = await self.client.archives.passages.create_many(
                    archive,
                    passages=[{"text": g.text, "created_at": g.created_at, "tags": g.tags} for g in chunk],
                )
            by_tag = {t[4:]: p.id for p in created_many for t in (p.tags or []) if t.startswith("grp:") and p.id}
            for group in chunk:
                if group.key not in by_tag:
                    raise DeliveryError("Letta's batch insert did not return every passage")
                out[group.key] = by_tag[group.key]
        return out

    async def _archive(self, agent: str) -> str | None:
        """The agent's archive id (Letta makes it on the first insert)."""
        async with letta_errors("finding the agent's archive"):
            page = await self.client.archives.list(agent_id=agent, limit=1)
        items = list(page.items)
        if items:
            self._archives[agent] = items[0].id
            return items[0].id
        return None

    async def delete_passage(self, agent: str, passage_id: str) -> None:
        """Delete a passage; one already gone (deleted before the ledger could forget it) is fine."""
        async with letta_errors("deleting a passage"):
            with contextlib.suppress(LettaNotFound):  # inside: `_letta` would make it a DeliveryError
                await self.client.agents.passages.delete(passage_id, agent_id=agent)

    async def sweep(self, agent: str, conversation_id: str) -> None:
        """Delete any passage still tagged with a deleted conversation (one the ledger did not know)."""
        while True:
            async with letta_errors("looking up passages by tag"):
                hits = await self.client.passages.search(agent_id=agent, tags=[f"conv:{conversation_id}"], limit=100)
            if not hits:
                return
            for hit in hits:
                if hit.passage.id:
                    await self.delete_passage(agent, hit.passage.id)
