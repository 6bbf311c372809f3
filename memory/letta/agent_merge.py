"""Several agents tagged for one user: found by ``omi-letta doctor``, merged by ``omi-letta merge-agents``.

Before agent creation was claimed per user (:mod:`memory.letta.agent_claims`), two workers could
each create a user's agent; the service then uses one of them (:func:`~memory.letta.agents.choose_agent`).
A merge keeps that one (or the one asked for) and, for each other agent:

1. copies the passages it holds that this service did not write (no ``omi`` tag: what the agent
   noted by itself) into the kept agent, tagged ``merged-from:<agent>``, once;
2. deletes it from Letta, and forgets its rows in the passage ledger.

The kept agent is then given every stored conversation again (``omi-letta backfill``, which the
command runs): delivery is idempotent, so what it holds stays and what only the others held is
added. A deleted agent's chat history is not moved.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from letta_client import NotFoundError as LettaNotFound

from memory.letta.agents import UID_TAG, choose_agent, uid_tag
from memory.letta.letta_client import letta_errors

if TYPE_CHECKING:
    from letta_client import AsyncLetta

    from memory.letta.agent_claims import AgentClaims
    from memory.letta.ledger import Ledger

__all__ = ["MergePlan", "duplicates", "merge_agents", "plan_merge"]

PAGE = 100
OURS = "omi"  # the tag of every passage the sink writes
MERGED_FROM = "merged-from:"


@dataclass
class MergePlan:
    """What merging one user's agents does: keep one, and per other agent the passages of its own to copy."""

    uid: str
    keep: str
    drop: list[str] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)  # dropped agent: passages not written by this service


async def _all_agents(client: AsyncLetta, tags: list[str] | None = None) -> list[Any]:
    found: list[Any] = []
    after: str | None = None
    while True:
        more: dict[str, Any] = {"tags": tags, "match_all_tags": True} if tags else {}
        if after is not None:
            more["after"] = after
        async with letta_errors("listing agents"):
            page = await client.agents.list(
                limit=PAGE, order="asc", order_by="created_at", include=["agent.tags"], **more
            )
        items = list(page.items)
        found += items
        if len(items) < PAGE:
            return found
        after = items[-1].id


async def duplicates(client: AsyncLetta) -> dict[str, list[str]]:
    """Every uid whose tag ``omi-uid:<uid>`` more than one agent carries, with their ids (oldest first)."""
    by_uid: defaultdict[str, list[str]] = defaultdict(list)
    for agent in await _all_agents(client):
        for tag in agent.tags or []:
            if tag.startswith(UID_TAG):
                by_uid[tag.removeprefix(UID_TAG)].append(agent.id)
    return {uid: ids for uid, ids in sorted(by_uid.items()) if len(ids) > 1}


async def _passages(client: AsyncLetta, agent: str) -> list[Any]:
    found: list[Any] = []
    after: str | None = None
    while True:
        more: dict[str, Any] = {} if after is None else {"after": after}
        async with letta_errors("listing an agent's passages"):
            page = await client.agents.passages.list(agent, limit=1000, **more)
        items = list(page)
        found += items
        if len(items) < 1000 or not items[-1].id:
            return found
        after = items[-1].id


def _own(passages: list[Any]) -> list[Any]:
    """The passages an agent wrote by itself (not tagged by this service)."""
    return [p for p in passages if OURS not in (p.tags or [])]


async def plan_merge(client: AsyncLetta, claims: AgentClaims, uid: str, *, keep: str | None = None) -> MergePlan:
    """What merging ``uid``'s agents would do (nothing is changed).

    Raises:
        ValueError: ``keep`` is not one of the user's agents, or the user has none.
        DeliveryError: Letta failed.
    """
    found = await _all_agents(client, [uid_tag(uid)])
    if not found:
        raise ValueError(f"no Letta agent is tagged {uid_tag(uid)}")
    if keep is not None and keep not in {a.id for a in found}:
        raise ValueError(f"{keep} is not one of the agents tagged {uid_tag(uid)}: {', '.join(a.id for a in found)}")
    kept = keep or choose_agent(found, await claims.get(uid)).id
    plan = MergePlan(uid, kept)
    for agent in found:
        if agent.id != kept:
            plan.drop.append(agent.id)
            plan.notes[agent.id] = len(_own(await _passages(client, agent.id)))
    return plan


async def merge_agents(client: AsyncLetta, claims: AgentClaims, ledger: Ledger, plan: MergePlan) -> int:
    """Carry out ``plan``: copy the other agents' own passages into the kept one, make it the user's agent in
    the claims, delete the others and their ledger rows. Returns the passages copied.

    Safe to run again after a failure: an agent's passages are copied once (their ``merged-from`` tag says so).

    Raises:
        DeliveryError: Letta failed (what was done stays done; run it again).
    """
    copied = 0
    kept = await _passages(client, plan.keep)
    done = {t.removeprefix(MERGED_FROM) for p in kept for t in p.tags or [] if t.startswith(MERGED_FROM)}
    for agent in plan.drop:
        if agent not in done:
            for passage in _own(await _passages(client, agent)):
                async with letta_errors("copying a passage into the kept agent"):
                    await client.agents.passages.create(
                        plan.keep,
                        text=passage.text,
                        created_at=passage.created_at,
                        tags=[*(passage.tags or []), f"{MERGED_FROM}{agent}"],
                    )
                copied += 1
    await claims.record(plan.uid, plan.keep)
    for agent in plan.drop:
        async with letta_errors("deleting a merged agent"):
            with contextlib.suppress(LettaNotFound):  # inside: `letta_errors` would make it a DeliveryError
                await client.agents.delete(agent)
        await ledger.forget_agent(agent)
    return copied
