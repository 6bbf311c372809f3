"""The Letta sink against the real local Letta server: passages, tags, times, the block, exactly once."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path

import msgspec
import pytest
from letta_client import AsyncLetta

from app.ops.letta_local import LocalLetta
from app.service.outbound import agent_registry
from app.settings import load_settings
from core.conversation import Conversation
from core.errors import DeliveryError
from core.segments import TranscriptSegment
from memory.letta.agent_claims import AgentClaims
from memory.letta.agent_merge import duplicates, merge_agents, plan_merge
from memory.letta.agents import RECENT_BLOCK, uid_tag
from memory.letta.ledger import Ledger
from memory.letta.letta_sink import LettaSink
from memory.letta.passage_groups import group_turns
from memory.store.conversation_store import ConversationStore
from memory.store.outbox import OutboxRecord
from tests.memory_support import SAMPLE_LINES, SAMPLE_SPEAKERS, T0
from tests.support import StandInEmbeddings, TcpBalancer, free_port


@pytest.fixture(scope="module")
def embeddings() -> Iterator[StandInEmbeddings]:
    server = StandInEmbeddings(dim=384).start()
    yield server
    server.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ConversationStore]:
    opened = await ConversationStore.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", sinks=("letta",))
    yield opened
    await opened.close()


def make_sink(letta: LocalLetta, store: ConversationStore, embeddings: StandInEmbeddings, **env: str) -> LettaSink:
    settings = load_settings(
        {
            "LETTA_BASE_URL": letta.base_url,
            "LETTA_SERVICE_URL": embeddings.url.removesuffix("/v1"),
            "LETTA_TIMEOUT_S": "20",
            "LETTA_MEMORY_TOOLS": "http",  # the stand-in serves no MCP; test_chat.py covers that path
            **env,
        },
        env_file=None,
    )

    async def spec() -> tuple[str, int]:
        return "stand-in", embeddings.dim

    return LettaSink.from_settings(settings.letta, store, agent_registry(settings, store, spec))


async def stored_sample(store: ConversationStore, uid: str, lines: int = len(SAMPLE_LINES)) -> Conversation:
    segments = [
        TranscriptSegment(
            text=text,
            speaker=f"SPEAKER_{int(who == 'Sheila')}",
            speaker_id=int(who == "Sheila"),
            is_user=False,
            start=3.0 * i,
            end=3.0 * i + 2.5,
            speaker_name=who,
        )
        for i, (who, text) in enumerate(zip(SAMPLE_SPEAKERS[:lines], SAMPLE_LINES[:lines], strict=True))
    ]
    return await store.add_completed(uid=uid, source="omi", language="en", started_at=T0, segments=segments, now=T0)


def record(conversation: Conversation, action: str = "turns", uid: str | None = None) -> OutboxRecord:
    return OutboxRecord(
        id=0,
        uid=uid or conversation.uid,
        sink="letta",
        action=action,
        conversation_id=conversation.id,
        turn_ids=[s.id for s in conversation.segments],
        status="pending",
        attempts=0,
        next_attempt_at=0.0,
        last_error=None,
        created_at=time.time(),
    )


async def agent_passages(client: AsyncLetta, agent: str) -> list:
    page = await client.agents.passages.list(agent, limit=1000)
    return list(page)


def expected_texts(conversation: Conversation, max_chars: int = 1500) -> list[str]:
    return sorted(g.text for g in group_turns(conversation, max_chars))


async def test_turns_become_tagged_passages_once_and_the_block_follows(
    letta: LocalLetta, store: ConversationStore, embeddings: StandInEmbeddings
):
    sink = make_sink(letta, store, embeddings, LETTA_PASSAGE_MAX_CHARS="300")
    uid = f"sink-{uuid.uuid4().hex[:8]}"
    conversation = await stored_sample(store, uid)
    try:
        await sink.deliver(record(conversation), conversation, conversation.segments)
        await sink.deliver(record(conversation, "closed"), conversation, [])
        agent = await sink.agents.agent_for(uid)
        passages = await agent_passages(sink.client, agent)
        groups = group_turns(conversation, 300)
        assert len(groups) > 1, "300 characters make several groups of the sample"
        assert sorted(p.text for p in passages) == sorted(g.text for g in groups)
        by_text = {p.text: p for p in passages}
        for group in groups:
            passage = by_text[group.text]
            tags = set(passage.tags or [])
            assert {"omi", f"conv:{conversation.id}", f"grp:{group.key}"} <= tags
            assert {f"turn:{t}" for t in group.turn_ids} <= tags
            assert any(t.startswith("speaker:") for t in tags)
            spoken = datetime.fromisoformat(group.created_at).timestamp()
            assert passage.created_at is not None and abs(passage.created_at.timestamp() - spoken) < 1
        first = by_text[groups[0].text]
        assert abs(first.created_at.timestamp() - T0) < 1, "created_at is when the words were spoken"
        assert "[2025-10-28 10:02] Diane: Hello?" in groups[0].text
        assert any("Sheila: And I'm Sheila in Texas" in p.text for p in passages)

        block = await sink.client.agents.blocks.retrieve(RECENT_BLOCK, agent_id=agent)
        assert f"conv:{conversation.id}" in block.value and "Diane" in block.value and "Sheila" in block.value

        # The same records again (a crash after Letta accepted them): nothing changes.
        await sink.deliver(record(conversation), conversation, conversation.segments)
        again = await agent_passages(sink.client, agent)
        assert sorted(p.id for p in again) == sorted(p.id for p in passages)
    finally:
        await sink.close()


async def test_a_changed_turn_rewrites_only_its_group(
    letta: LocalLetta, store: ConversationStore, embeddings: StandInEmbeddings
):
    sink = make_sink(letta, store, embeddings, LETTA_PASSAGE_MAX_CHARS="300")
    uid = f"sink-{uuid.uuid4().hex[:8]}"
    conversation = await stored_sample(store, uid)
    try:
        await sink.deliver(record(conversation), conversation, conversation.segments)
        agent = await sink.agents.agent_for(uid)
        before = {p.text: p.id for p in await agent_passages(sink.client, agent)}
        last = conversation.segments[-1]
        relabelled = msgspec.structs.replace(last, speaker_name="Diane Smith")
        conversation.segments[-1] = relabelled
        await store.save_segments(conversation, [relabelled], last_speech_at=T0)
        changed = record(conversation)
        await sink.deliver(changed, conversation, [relabelled])
        after = {p.text: p.id for p in await agent_passages(sink.client, agent)}
        assert sorted(after) == expected_texts(conversation, 300)
        kept = set(before) & set(after)
        assert len(kept) == len(after) - 1, "every group but the last is untouched"
        assert all(before[t] == after[t] for t in kept)
        assert any("Diane Smith: Oh, I don't hear that in New Jersey now." in t for t in after)
    finally:
        await sink.close()


async def test_a_deleted_conversation_leaves_no_passage_and_leaves_the_block(
    letta: LocalLetta, store: ConversationStore, embeddings: StandInEmbeddings
):
    sink = make_sink(letta, store, embeddings)
    uid = f"sink-{uuid.uuid4().hex[:8]}"
    kept = await stored_sample(store, uid, lines=4)
    gone = await stored_sample(store, uid)
    try:
        for c in (kept, gone):
            await sink.deliver(record(c), c, c.segments)
            await sink.deliver(record(c, "closed"), c, [])
        agent = await sink.agents.agent_for(uid)
        await store.delete(uid, gone.id)
        await sink.deliver(record(gone, "deleted"), None, [])
        left = await agent_passages(sink.client, agent)
        assert [p.text for p in left] == expected_texts(kept)
        block = await sink.client.agents.blocks.retrieve(RECENT_BLOCK, agent_id=agent)
        assert f"conv:{kept.id}" in block.value and f"conv:{gone.id}" not in block.value
    finally:
        await sink.close()


async def test_an_insert_whose_reply_was_lost_is_found_not_repeated(
    letta: LocalLetta, store: ConversationStore, embeddings: StandInEmbeddings
):
    sink = make_sink(letta, store, embeddings)
    uid = f"sink-{uuid.uuid4().hex[:8]}"
    conversation = await stored_sample(store, uid)
    try:
        agent = await sink.agents.agent_for(uid)
        groups = group_turns(conversation, sink.archive.passage_max_chars)
        # A crash between Letta's insert and the ledger's confirmation: claimed, inserted, never marked.
        assert await sink.archive.ledger.claim(
            uid=uid, agent_id=agent, conversation_id=conversation.id, keys=[groups[0].key]
        )
        await sink.archive.insert(agent, groups[:1])
        with pytest.raises(DeliveryError, match="in flight"):
            await sink.deliver(record(conversation), conversation, conversation.segments)
        sink.archive.stale_s = 0.0  # the claim is now older than any request could take
        await sink.deliver(record(conversation), conversation, conversation.segments)
        passages = await agent_passages(sink.client, agent)
        assert sorted(p.text for p in passages) == expected_texts(conversation), "no duplicate"
        assert (await sink.archive.ledger.entries(agent, conversation.id)).keys() == {g.key for g in groups}
    finally:
        await sink.close()


async def test_an_unreachable_letta_is_a_delivery_error_and_claims_nothing(
    store: ConversationStore, embeddings: StandInEmbeddings, tmp_path: Path
):
    dead = LocalLetta(tmp_path, port=free_port())  # never started: nothing listens on its port
    sink = make_sink(dead, store, embeddings, LETTA_AGENT_ID="agent-00000000-0000-4000-8000-000000000000")
    conversation = await stored_sample(store, "offline")
    try:
        with pytest.raises(DeliveryError, match="unreachable"):
            await sink.deliver(record(conversation), conversation, conversation.segments)
        assert await sink.archive.ledger.entries("agent-00000000-0000-4000-8000-000000000000", conversation.id) == {}
    finally:
        await sink.close()


async def test_a_late_copy_of_a_reinserted_group_is_deleted(
    letta: LocalLetta, store: ConversationStore, embeddings: StandInEmbeddings
):
    sink = make_sink(letta, store, embeddings)
    uid = f"sink-{uuid.uuid4().hex[:8]}"
    conversation = await stored_sample(store, uid)
    try:
        agent = await sink.agents.agent_for(uid)
        [group] = group_turns(conversation, sink.archive.passage_max_chars)
        # An insert timed out and was never seen: the claim is settled as missing and inserted again...
        assert await sink.archive.ledger.claim(
            uid=uid, agent_id=agent, conversation_id=conversation.id, keys=[group.key]
        )
        sink.archive.stale_s = 0.0
        await sink.deliver(record(conversation), conversation, conversation.segments)
        [kept] = await agent_passages(sink.client, agent)
        # ...and then Letta carries out the old request after all.
        await sink.archive.insert(agent, [group])
        assert len(await agent_passages(sink.client, agent)) == 2
        await sink.tick()
        assert [p.id for p in await agent_passages(sink.client, agent)] == [kept.id]
        assert (await sink.archive.ledger.entries(agent, conversation.id))[group.key].passage_id == kept.id
    finally:
        await sink.close()


async def test_an_adopted_agent_gets_the_search_memory_http_tool_and_a_token(
    letta: LocalLetta, store: ConversationStore, embeddings: StandInEmbeddings
):
    from memory.store.tokens import TokenStore

    sink = make_sink(letta, store, embeddings)
    uid = f"sink-{uuid.uuid4().hex[:8]}"
    try:
        args = await sink.agents.spec.create_args(uid)  # made elsewhere, without our tool
        existing = await sink.client.agents.create(**args)
        assert await sink.agents.agent_for(uid) == existing.id, "the agent tagged omi-uid:<uid> is adopted"
        adopted = await sink.client.agents.retrieve(existing.id, include=["agent.tools", "agent.secrets"])
        assert "search_memory_http" in {t.name for t in adopted.tools or []}
        secrets = {s.key: s.value for s in adopted.secrets or []}
        assert secrets["OMI_LETTA_URL"] == embeddings.url.removesuffix("/v1")
        assert await TokenStore(store.engine).resolve(secrets["OMI_LETTA_TOKEN"]) == uid
    finally:
        await sink.close()


async def test_where_letta_refuses_our_mcp_server_agents_get_the_http_tool(
    letta: LocalLetta, store: ConversationStore, embeddings: StandInEmbeddings, tmp_path: Path
):
    # The local Letta server allows MCP servers on loopback addresses only, as a shared one allows none.
    sink = make_sink(
        letta,
        store,
        embeddings,
        LETTA_MEMORY_TOOLS="mcp",
        LETTA_SERVICE_URL="http://10.255.255.1:9",
        DATA_DIR=str(tmp_path),
    )
    try:
        [tool] = await sink.agents.memory_tool_ids()
        assert (await sink.client.tools.retrieve(tool)).name == "search_memory_http"
    finally:
        await sink.close()


async def test_two_workers_finding_no_agent_at_once_create_one_under_the_claim(
    letta: LocalLetta,
    store: ConversationStore,
    embeddings: StandInEmbeddings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
):
    """Issue "Always on": two registries on two connections to one database (two workers), with Letta slowed
    so that both have listed no agent before either creates one."""
    slow = TcpBalancer([letta.port], delay_s=0.4).start()
    other = await ConversationStore.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", sinks=("letta",))
    env = {"LETTA_BASE_URL": slow.http}
    a, b = make_sink(letta, store, embeddings, **env), make_sink(letta, other, embeddings, **env)
    uid = f"race-{uuid.uuid4().hex[:8]}"
    try:
        await asyncio.gather(a.agents.memory_tool_ids(), b.agents.memory_tool_ids())  # not what races here
        with caplog.at_level(logging.INFO, logger="memory.letta.agents"):
            found = await asyncio.gather(a.agents.agent_for(uid), b.agents.agent_for(uid))
        assert "waiting for worker" in caplog.text, "both found no agent, and one waited for the other's claim"
        tagged = (await a.client.agents.list(tags=[uid_tag(uid)], match_all_tags=True, limit=10)).items
        assert [t.id for t in tagged] == [found[0]] == [found[1]], "exactly one agent, used by both"
        claim = await AgentClaims(store.engine, "reader").get(uid)
        assert claim is not None and claim.agent_id == found[0]
    finally:
        await a.close()
        await b.close()
        await other.close()
        slow.stop()


async def test_duplicate_agents_are_used_alike_then_merged_into_the_one_in_use(
    letta: LocalLetta, store: ConversationStore, embeddings: StandInEmbeddings
):
    """Agents made twice before claims existed: every worker uses the oldest, and a merge keeps it, copies the
    other's own notes, deletes it, and the kept agent then gets the user's conversations again."""
    sink = make_sink(letta, store, embeddings)
    uid = f"dup-{uuid.uuid4().hex[:8]}"
    conversation = await stored_sample(store, uid)
    try:
        args = await sink.agents.spec.create_args(uid)
        older = await sink.client.agents.create(**args)
        newer = await sink.client.agents.create(**args)
        await sink.client.agents.passages.create(newer.id, text="The wearer prefers tea to coffee.", tags=["note"])
        await sink.deliver(record(conversation), conversation, conversation.segments)
        assert await sink.agents.agent_for(uid) == older.id, "the oldest of the duplicates"
        assert (await duplicates(sink.client))[uid] == [older.id, newer.id]

        claims = AgentClaims(store.engine, "cli")
        plan = await plan_merge(sink.client, claims, uid)
        assert (plan.keep, plan.drop, plan.notes) == (older.id, [newer.id], {newer.id: 1})
        assert await merge_agents(sink.client, claims, Ledger(store.engine), plan) == 1
        assert await merge_agents(sink.client, claims, Ledger(store.engine), plan) == 0, "copied once"
        assert uid not in await duplicates(sink.client)
        tagged = (await sink.client.agents.list(tags=[uid_tag(uid)], match_all_tags=True, limit=10)).items
        assert [a.id for a in tagged] == [older.id]
        texts = [p.text for p in await agent_passages(sink.client, older.id)]
        assert "The wearer prefers tea to coffee." in texts
        assert sorted(t for t in texts if t.startswith("Conversation ")) == expected_texts(conversation)
    finally:
        await sink.close()
