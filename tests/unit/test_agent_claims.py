"""The claim on creating a user's Letta agent, and the device activity table, on real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import msgspec

from memory.letta.agent_claims import AgentClaims, owner_gone
from memory.store.conversation_store import ConversationStore
from memory.store.device_activity import DeviceActivity


async def test_one_worker_wins_the_claim_and_the_others_see_whose_it_is(database_url: str):
    stores = [await ConversationStore.open(database_url) for _ in range(2)]  # two connections: two workers
    try:
        a, b = AgentClaims(stores[0].engine, "worker-a"), AgentClaims(stores[1].engine, "worker-b")
        won = await asyncio.gather(*(c.claim("alice", now=100.0) for c in (a, b, a, b)))
        assert sorted(won) == [False, False, False, True], "exactly one insert succeeds"
        held = await b.get("alice")
        assert held is not None and held.agent_id is None
        winner = a if held.owner == "worker-a" else b
        loser = b if winner is a else a
        assert not await loser.take_over(msgspec.structs.replace(held, claimed_at=99.0)), "it changed since"
        await winner.settle("alice", "agent-1")
        assert (await loser.get("alice")).agent_id == "agent-1"  # type: ignore[union-attr]

        settled = await loser.get("alice")
        assert settled is not None and await loser.take_over(settled), "a claim naming an agent that is gone"
        taken = await winner.get("alice")
        assert taken is not None and (taken.owner, taken.agent_id) == (loser.owner, None)
        await winner.release("alice")
        assert await winner.get("alice") is not None, "only the owner releases"
        await loser.release("alice")
        assert await winner.get("alice") is None
        await winner.record("bob", "agent-2")
        await loser.record("bob", "agent-3")
        assert (await winner.get("bob")).agent_id == "agent-3"  # type: ignore[union-attr]
        assert set(await winner.all()) == {"bob"}
    finally:
        for store in stores:
            await store.close()


async def test_device_activity_keeps_the_latest_time_of_each_device(database_url: str):
    store = await ConversationStore.open(database_url)
    try:
        activity = DeviceActivity(store.engine)
        await activity.heard({"alice": 100.0, "bob": 50.0})
        await activity.heard({"alice": 90.0})  # an older time from another worker changes nothing
        await asyncio.gather(activity.heard({"carol": 10.0}), activity.heard({"carol": 20.0}))
        assert await activity.since(0.0) == {"alice": 100.0, "bob": 50.0, "carol": 20.0}
        assert await activity.since(60.0) == {"alice": 100.0}
    finally:
        await store.close()


def test_a_claim_of_a_process_of_this_host_that_is_gone_can_be_taken_over_at_once() -> None:
    import os
    import socket
    import subprocess
    import sys

    from memory.redis_state import worker_id

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)  # a process that has exited
    host = socket.gethostname()
    assert owner_gone(f"{host}-{dead}-abc123") and owner_gone(f"worker-1:{host}-{dead}-abc123")
    assert not owner_gone(worker_id()), "this process runs"
    assert not owner_gone(f"{host}-{os.getppid()}-abc123"), "a running process"
    assert not owner_gone(f"another-host-{dead}-abc123"), "another host's process cannot be told"
    assert not owner_gone("worker-a")
