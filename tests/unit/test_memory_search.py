"""Hybrid memory search over real speech-like turns: words and meaning, fused, with filters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from memory.index import IndexHit
from memory.index.local import LocalVectorIndex
from memory.search import LexicalIndex, MemorySearch, Turn, fuse, lexical_query
from tests.memory_support import T0, local_embedder, sample_turns


@pytest.fixture
async def search(tmp_path: Path) -> AsyncIterator[MemorySearch]:
    s = MemorySearch(local_embedder(), LocalVectorIndex(tmp_path), LexicalIndex(tmp_path))
    await s.add(sample_turns("alice"))
    later = T0 + 86_400
    await s.add(
        [
            Turn(
                uid="alice",
                turn_id="d2-0",
                conversation_id="day2",
                speaker="me",
                is_user=True,
                start=later,
                end=later + 3,
                text="Remember that the dentist moved my appointment to Friday morning.",
            ),
            Turn(
                uid="alice",
                turn_id="d2-1",
                conversation_id="day2",
                speaker="Bob",
                is_user=False,
                start=later + 5,
                end=later + 8,
                text="Diane called, she wants the budget numbers before the meeting.",
            ),
            Turn(
                uid="bob",
                turn_id="b-0",
                conversation_id="other",
                speaker="Diane",
                is_user=False,
                start=T0,
                end=T0 + 2,
                text="Diane lives in New Jersey, everyone knows that.",
            ),
        ]
    )
    yield s
    await s.close()


async def test_where_does_diane_live_ranks_the_new_jersey_turn_first(search: MemorySearch):
    hits = await search.search("alice", "where does Diane live", limit=5)
    assert hits[0].text == "This is Diane in New Jersey."
    assert (hits[0].speaker, hits[0].conversation_id) == ("Diane", "conv-sample")
    assert all(h.turn_id != "b-0" for h in hits)  # another user's turn is never found
    assert hits[0].score > hits[1].score


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("where is Sheila from", "And I'm Sheila in Texas, originally from Chicago."),
        ("who lives in Texas", "And I'm Sheila in Texas, originally from Chicago."),
        ("Yankee", "At least you know, they all call me a Yankee down here, so what can I say?"),
        ("when is my dental appointment", "Remember that the dentist moved my appointment to Friday morning."),
        ("Friday", "Remember that the dentist moved my appointment to Friday morning."),
        ("what does Diane want", "Diane called, she wants the budget numbers before the meeting."),
    ],
)
async def test_names_places_and_days_find_their_turn(search: MemorySearch, query: str, expected: str):
    assert (await search.search("alice", query, limit=3))[0].text == expected


async def test_filters(search: MemorySearch):
    by_sheila = await search.search("alice", "New Jersey", limit=20, speaker="sheila")  # any case
    assert by_sheila and {h.speaker for h in by_sheila} == {"Sheila"}
    assert await search.search("alice", "New Jersey", speaker="Nobody") == []
    day2 = await search.search("alice", "Diane", limit=20, conversation_id="day2")
    assert {h.conversation_id for h in day2} == {"day2"}
    since = await search.search("alice", "Diane", limit=20, since=T0 + 3600)
    assert {h.turn_id for h in since} <= {"d2-0", "d2-1"} and "d2-1" in {h.turn_id for h in since}
    until = await search.search("alice", "Diane", limit=20, until=T0 + 3600)
    assert all(h.start <= T0 + 3600 for h in until) and until[0].text == "This is Diane in New Jersey."


async def test_delete_removes_turns_from_both_indexes(search: MemorySearch):
    await search.delete("alice", conversation_id="conv-sample")
    hits = await search.search("alice", "where does Diane live", limit=10)
    assert {h.conversation_id for h in hits} == {"day2"}
    await search.delete("alice", ids=["d2-1"])
    assert {h.turn_id for h in await search.search("alice", "Diane budget", limit=10)} == {"d2-0"}
    assert await search.lexical.count("alice") == 1 and await search.index.count("alice") == 1
    await search.delete("alice")
    assert await search.search("alice", "dentist") == []
    assert await search.index.count("bob") == 1


async def test_blank_query_and_fts_syntax_are_harmless(search: MemorySearch):
    assert await search.search("alice", "   ") == []
    hits = await search.search("alice", 'Diane" OR NEAR(x) -- *', limit=3)
    assert hits  # quoted word by word, never parsed as FTS5 syntax


def test_lexical_query_drops_stopwords_and_quotes_words():
    assert lexical_query("Where does Diane live?") == '"diane" OR "live"'
    assert lexical_query("where is it") == '"where" OR "is" OR "it"'  # only stopwords: keep them
    assert lexical_query("?!") is None


def test_reciprocal_rank_fusion_rewards_agreement():
    def hit(turn_id: str) -> IndexHit:
        return IndexHit(
            turn_id=turn_id, conversation_id="c", speaker="s", is_user=False, start=0, end=1, text="", score=0
        )

    fused = fuse([[hit("a"), hit("b"), hit("c")], [hit("b"), hit("d")]], limit=3)
    assert [h.turn_id for h in fused] == ["b", "a", "d"]
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61, abs=1e-6)
