"""The facts store (OMI's "memories") on SQLite and PostgreSQL: what the app's /v3/memories routes use."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from memory.store.conversation_store import ConversationStore
from memory.store.facts import FactChange, FactStore

UID = "alice"


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[ConversationStore]:
    opened = await ConversationStore.open(database_url)
    await FactStore(opened.engine).delete_all(UID)  # the shared PostgreSQL keeps rows between tests
    yield opened
    await opened.close()


async def test_the_fact_store_api_for_the_omi_apps_memories(store: ConversationStore) -> None:
    facts = FactStore(store.engine)
    mine = await facts.add(UID, "  Likes hiking in the Alps ", category="Hobbies")
    assert (mine.content, mine.category, mine.manual, mine.conversation_id) == (
        "Likes hiking in the Alps",
        "hobbies",
        True,
        None,
    )
    other = await facts.add(UID, "Works as a nurse", category="nonsense")
    assert other.category == "other"
    assert [f.id for f in await facts.list(UID, limit=1, offset=0)] == [other.id]  # newest first
    assert [f.id for f in await facts.list(UID, limit=10, offset=1)] == [mine.id]
    edited = await facts.update(UID, mine.id, "Likes hiking in the Dolomites")
    assert (
        edited is not None
        and edited.content == "Likes hiking in the Dolomites"
        and edited.updated_at >= mine.updated_at
    )
    assert edited.edited and edited.manual and not mine.edited
    assert await facts.update("bob", mine.id, "not theirs") is None and await facts.get("bob", mine.id) is None
    assert await facts.delete(UID, other.id) and [f.id for f in await facts.list(UID)] == [mine.id]
    removed = await facts.get(UID, other.id)
    assert removed is not None and removed.removed and await facts.update(UID, other.id, "back") is None
    again = await facts.apply(
        UID, "c9", [FactChange(content="Works as a nurse", category="work")]
    )  # deleted by the user: not brought back
    assert again["added"] == [] and [f.id for f in again["kept"]] == [other.id]
    with pytest.raises(ValueError):
        await facts.add(UID, "   ")
    assert await facts.delete_all(UID) == 2 and await facts.list(UID, include_old=True) == []


async def test_applying_a_conversations_facts_adds_supersedes_and_never_duplicates(store: ConversationStore) -> None:
    facts = FactStore(store.engine)
    first = await facts.apply(UID, "c1", [FactChange(content="Lives in Lisbon", category="core")])
    lisbon = first["added"][0]
    moved = await facts.apply(
        UID,
        "c2",
        [
            FactChange(content="Lives in Porto", category="core", replaces=lisbon.id),
            FactChange(content="LIVES IN PORTO!"),  # the same words twice in one answer: stored once
        ],
    )
    assert [f.content for f in moved["added"]] == ["Lives in Porto"] and [f.id for f in moved["superseded"]] == [
        lisbon.id
    ]
    assert [f.content for f in await facts.list(UID)] == ["Lives in Porto"]
    old = await facts.get(UID, lisbon.id)
    assert old is not None and old.superseded_by == moved["added"][0].id and not old.current
    again = await facts.apply(UID, "c2", [FactChange(content="Lives in Porto", category="core")])
    assert again["added"] == [] and len(await facts.list(UID, include_old=True)) == 2
    assert await facts.forget_conversation(UID, "c2") == 1  # c2 deleted: Lisbon is current again
    assert [f.content for f in await facts.list(UID)] == ["Lives in Lisbon"]
