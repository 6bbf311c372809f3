"""Conversations understood when they close: OMI's ``structured`` fields and the facts about the user,
from the tests' stand-in model; the extractive fallback with no model; facts superseded, never
duplicated, in the store, the search index and the agent's ``known_facts`` block."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.conversation import Conversation
from core.metrics import Metrics
from core.segments import TranscriptSegment
from memory.delivery.deliverer import Deliverer
from memory.delivery.index_sink import IndexSink
from memory.letta.blocks import FACTS_BLOCK, FactsBlock
from memory.search.hybrid import LexicalIndex, MemorySearch
from memory.search.local_index import LocalVectorIndex
from memory.store.conversation_store import ConversationStore
from memory.store.facts import FactStore
from memory.store.outbox import Outbox
from memory.understand.structure import Structurer, extractive
from memory.understand.understanding import Understanding
from tests.llm_standin import ScriptedLlm
from tests.memory_support import SAMPLE_LINES, SAMPLE_SPEAKERS, T0, e5_embedder
from tests.support import free_port

UID = "alice"
STRUCTURED = {
    "title": "Diane and Sheila compare Chicago roots",
    "overview": "Diane in New Jersey and Sheila in Texas find they both come from Chicago.",
    "emoji": "📞",
    "category": "social",
    "action_items": [{"description": "Call Sheila again next week"}],
    "events": [{"title": "Call with Sheila", "description": "Follow-up call", "start": "2025-11-04T10:00:00Z"}],
    "facts": [
        {"content": "Lives in New Jersey", "category": "core"},
        {"content": "Originally from Chicago", "category": "core"},
    ],
}


def sample(conversation_id: str = "c1", t0: float = T0) -> Conversation:
    """The pyannote sample call as a completed conversation; Diane is the user."""
    segments = [
        TranscriptSegment(
            id=f"{conversation_id}-{i}",
            text=text,
            speaker=f"SPEAKER_{int(speaker == 'Sheila')}",
            speaker_id=int(speaker == "Sheila"),
            is_user=speaker == "Diane",
            speaker_name=None if speaker == "Diane" else speaker,
            start=3.0 * i,
            end=3.0 * i + 2.5,
        )
        for i, (speaker, text) in enumerate(zip(SAMPLE_SPEAKERS, SAMPLE_LINES, strict=True))
    ]
    end = t0 + segments[-1].end
    return Conversation(
        id=conversation_id,
        uid=UID,
        status="completed",
        source="omi",
        language="en",
        created_at=t0,
        started_at=t0,
        finished_at=end,
        last_speech_at=end,
        timeout_s=120,
        segments=segments,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ConversationStore]:
    opened = await ConversationStore.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", sinks=("index",))
    yield opened
    await opened.close()


@pytest.fixture
async def search(tmp_path: Path) -> AsyncIterator[MemorySearch]:
    s = MemorySearch(e5_embedder(), LocalVectorIndex(tmp_path / "index"), LexicalIndex(tmp_path / "index"))
    yield s
    await s.close()


@pytest.fixture
def llm() -> Any:
    with ScriptedLlm(delay_s=0.0) as server:
        yield server


class FakeBlocks:
    """The part of Letta's client a block write uses: the value each label was last set to."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.writes = 0

    async def update(self, label: str, *, agent_id: str, value: str) -> None:
        self.values[label] = value
        self.writes += 1


class FakeLetta:
    def __init__(self) -> None:
        self.agents = type("Agents", (), {})()
        self.agents.blocks = FakeBlocks()


async def test_a_closed_conversation_gets_omi_structured_fields_and_facts_from_the_model(
    store: ConversationStore, search: MemorySearch, llm: ScriptedLlm
):
    llm.understanding = STRUCTURED
    facts = FactStore(store.engine)
    understanding = Understanding(store, facts, Structurer(llm.base_url, "scripted", timeout_s=30), search)
    sink = IndexSink(search, on_closed=understanding.conversation)
    await store.put_completed(sample())
    await Deliverer(store, Outbox(store.engine), [sink], metrics=Metrics()).run_once(sink)  # turns, then closed

    stored = (await store.get(UID, "c1")).structured or {}
    assert stored["title"] == STRUCTURED["title"] and stored["overview"] == STRUCTURED["overview"]
    assert (stored["emoji"], stored["category"]) == ("📞", "social")
    assert stored["action_items"] == [{"description": "Call Sheila again next week", "completed": False}]
    assert stored["events"][0]["title"] == "Call with Sheila" and stored["events"][0]["duration"] == 30
    omi = (await store.get(UID, "c1")).to_omi()["structured"]
    assert omi["title"] == STRUCTURED["title"]
    asked = llm.requests[-1]["messages"][1]["content"]
    assert "Sheila: And I'm Sheila in Texas" in asked and "me: This is Diane in New Jersey." in asked

    current = await facts.list(UID)
    assert sorted(f.content for f in current) == ["Lives in New Jersey", "Originally from Chicago"]
    assert all(f.conversation_id == "c1" and not f.manual and f.category == "core" for f in current)
    hits = await search.search(UID, "where does she come from originally", limit=20)
    assert {"c1#summary", *(f"fact:{f.id}" for f in current)} <= {h.turn_id for h in hits}

    # Delivered again (a lost reply): it has a summary now, so the model is not asked twice.
    asked_before = len(llm.requests)
    assert await understanding.conversation(UID, "c1") is None and len(llm.requests) == asked_before


async def test_a_fact_the_model_replaces_is_superseded_not_duplicated_and_leaves_the_agents_block(
    store: ConversationStore, search: MemorySearch, llm: ScriptedLlm
):
    facts = FactStore(store.engine)
    letta = FakeLetta()
    block = FactsBlock(letta, facts)  # type: ignore[arg-type]
    understanding = Understanding(
        store, facts, Structurer(llm.base_url, "scripted", timeout_s=30), search,
        on_facts=lambda uid: block.refresh_facts("agent-1", uid),
    )  # fmt: skip
    llm.understanding = STRUCTURED
    await store.put_completed(sample("c1"))
    await understanding.conversation(UID, "c1")
    first = letta.agents.blocks.values[FACTS_BLOCK]
    assert "- Lives in New Jersey [core]" in first and "- Originally from Chicago [core]" in first

    def moved(prompt: str) -> dict[str, Any]:  # the model sees the current facts with their ids
        found = re.search(r"- id (\S+): Lives in New Jersey", prompt)
        assert found, prompt
        return {
            "title": "Moving day",
            "overview": "Diane has moved to Boston.",
            "facts": [
                {"content": "Lives in Boston", "category": "core", "replaces": found.group(1)},
                {"content": "originally from Chicago.", "category": "core"},  # the same words: kept once
            ],
        }

    llm.understanding = moved
    await store.put_completed(sample("c2", t0=T0 + 86_400))
    understood = await understanding.conversation(UID, "c2")
    assert understood is not None and understood.by == "llm"

    current = sorted(f.content for f in await facts.list(UID))
    assert current == ["Lives in Boston", "Originally from Chicago"]
    old = [f for f in await facts.list(UID, include_old=True) if f.content == "Lives in New Jersey"]
    assert len(old) == 1 and old[0].superseded_by is not None and not old[0].current
    value = letta.agents.blocks.values[FACTS_BLOCK]
    assert "Lives in Boston" in value and "New Jersey" not in value  # rewritten, not appended
    assert value.count("Originally from Chicago") == 1
    hits = {h.turn_id for h in await search.search(UID, "lives in New Jersey Boston", limit=30)}
    assert f"fact:{old[0].id}" not in hits and f"fact:{old[0].superseded_by}" in hits

    # The user deletes a fact by hand: the block, rewritten, drops it too.
    boston = next(f for f in await facts.list(UID) if f.content == "Lives in Boston")
    assert await facts.delete(UID, boston.id) and not await facts.delete(UID, boston.id)
    assert "Boston" not in await block.refresh_facts("agent-1", UID)


async def test_with_no_model_reachable_an_extractive_title_and_overview_still_come(
    store: ConversationStore, search: MemorySearch
):
    facts = FactStore(store.engine)
    nobody = Structurer(f"http://127.0.0.1:{free_port()}/v1", "none", timeout_s=5)
    understanding = Understanding(store, facts, nobody, search)
    await store.put_completed(sample())
    understood = await understanding.conversation(UID, "c1")
    assert understood is not None and understood.by == "extractive" and understood.facts == []
    stored = (await store.get(UID, "c1")).structured or {}
    assert stored["title"] and stored["overview"] and stored["emoji"] and stored["category"] == "other"
    assert set(stored) == {"title", "overview", "emoji", "category", "action_items", "events"}
    assert "Chicago" in stored["overview"] or "New Jersey" in stored["overview"]  # what recurs in the call
    assert await facts.list(UID) == []
    assert "c1#summary" in {h.turn_id for h in await search.search(UID, stored["title"], limit=10)}


async def test_an_answer_that_is_not_json_falls_back_to_the_extractive_summary(llm: ScriptedLlm):
    llm.understanding = "Sure! Here is a summary: they talked."
    understood = await Structurer(llm.base_url, "scripted", timeout_s=30).understand(sample())
    assert understood.by == "extractive" and understood.structured == extractive(sample())
    off = await Structurer("", "none").understand(sample())  # UNDERSTAND_CONVERSATIONS=extractive
    assert off.by == "extractive" and off.structured["title"]


class FakeRegistry:
    """The part of the agent registry the Letta sink's block writes use: one agent, its lock, the fake client."""

    def __init__(self) -> None:
        self.client = FakeLetta()
        self.lock = asyncio.Lock()

    def write_lock(self, agent: str) -> asyncio.Lock:
        return self.lock

    async def agent_for(self, uid: str) -> str:
        return "agent-1"


async def test_a_users_own_edit_reaches_the_index_and_the_agents_block(store: ConversationStore, search: MemorySearch):
    """Through the outbox, as ``/v3/memories`` edits go: each change is a ``facts`` record for both sinks."""
    from memory.letta.letta_sink import LettaSink

    registry = FakeRegistry()
    letta = LettaSink(registry, store)  # type: ignore[arg-type]
    facts = FactStore(store.engine, sinks=("index", "letta"))
    understanding = Understanding(store, facts, Structurer("", "none"), search)
    index = IndexSink(search, on_facts=understanding.reindex_facts)
    deliverer = Deliverer(store, Outbox(store.engine), [index, letta], metrics=Metrics())

    async def delivered() -> None:
        for sink in (index, letta):
            await deliverer.run_once(sink)

    fact = await facts.add(UID, "Allergic to peanuts", category="health")
    await delivered()
    assert "Allergic to peanuts" in registry.client.agents.blocks.values[FACTS_BLOCK]
    assert f"fact:{fact.id}" in {h.turn_id for h in await search.search(UID, "peanut allergy", limit=5)}
    edited = await facts.update(UID, fact.id, "Allergic to peanuts and cashews")
    assert edited is not None
    await delivered()
    hits = await search.search(UID, "cashews", limit=5)
    assert hits[0].turn_id == f"fact:{fact.id}" and hits[0].text == "Allergic to peanuts and cashews"
    assert await facts.delete(UID, fact.id)
    await delivered()
    assert "peanuts" not in registry.client.agents.blocks.values[FACTS_BLOCK]
    assert all(h.turn_id != f"fact:{fact.id}" for h in await search.search(UID, "cashews", limit=5))


async def test_a_deleted_conversation_takes_its_summary_and_an_erased_users_facts_out_of_the_index(
    store: ConversationStore, search: MemorySearch, llm: ScriptedLlm
):
    llm.understanding = STRUCTURED
    facts = FactStore(store.engine)
    understanding = Understanding(store, facts, Structurer(llm.base_url, "scripted", timeout_s=30), search)
    sink = IndexSink(search, on_closed=understanding.conversation, on_deleted=understanding.forget)
    deliver = Deliverer(store, Outbox(store.engine), [sink], metrics=Metrics())
    await store.put_completed(sample("c1"))
    await store.put_completed(sample("c2", t0=T0 + 86_400))
    await deliver.run_once(sink)

    async def ids() -> set[str]:
        return {h.turn_id for h in await search.search(UID, "Chicago New Jersey roots", limit=50)}

    assert {"c1#summary", "c2#summary"} <= await ids() and any(i.startswith("fact:") for i in await ids())
    await store.delete(UID, "c1")
    await deliver.run_once(sink)
    assert "c1#summary" not in await ids() and any(i.startswith("fact:") for i in await ids())  # facts stay
    await facts.delete_all(UID)  # the user is erased: facts first, then each conversation
    await store.delete(UID, "c2")
    await deliver.run_once(sink)
    assert await ids() == set()


async def test_with_letta_delivery_the_summary_becomes_a_passage_of_the_conversation(
    tmp_path: Path, search: MemorySearch, llm: ScriptedLlm
):
    from memory.letta.archival import passages_of

    llm.understanding = STRUCTURED
    store = await ConversationStore.open(f"sqlite+aiosqlite:///{tmp_path / 'l.sqlite'}", sinks=("index", "letta"))
    try:
        await store.put_completed(sample())
        before = {r.id for r in await Outbox(store.engine).records(status="pending")}
        understanding = Understanding(store, FactStore(store.engine), Structurer(llm.base_url, "m"), search)
        await understanding.conversation(UID, "c1")
        queued = [r for r in await Outbox(store.engine).records(status="pending") if r.id not in before]
        assert {(r.sink, r.action) for r in queued} == {("letta", "turns"), ("letta", "closed")}
        conversation = await store.get(UID, "c1")
    finally:
        await store.close()
    groups = passages_of(conversation, 1500)
    summary = groups[-1]
    assert "summary" in summary.tags and "conv:c1" in summary.tags and summary.turn_ids == []
    assert STRUCTURED["title"] in summary.text and "Action item: Call Sheila again next week" in summary.text
    assert "Event: Call with Sheila 2025-11-04T10:00:00Z" in summary.text
    assert [g.key for g in passages_of(conversation, 1500)] == [g.key for g in groups]  # the same keys: no repeat
