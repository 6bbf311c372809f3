"""Hybrid memory search over real speech-like turns: words and meaning, fused, with filters; and the
in-memory BM25F lexical index on its own: scores with context, filters, writes, reloads."""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import memory.search.lexical
import memory.search.lexical_shard
from memory.search.hybrid import LexicalIndex, MemorySearch, Turn, fuse, lexical_query, query_terms, tokenize
from memory.search.lexical_shard import LexicalWeights
from memory.search.local_index import LocalVectorIndex
from memory.search.vector_index import IndexHit
from memory.search.words import content_terms
from memory.store.crypto import installed
from tests.memory_support import T0, e5_embedder, sample_turns


@pytest.fixture
async def search(tmp_path: Path) -> AsyncIterator[MemorySearch]:
    s = MemorySearch(e5_embedder(), LocalVectorIndex(tmp_path), LexicalIndex(tmp_path))
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
    assert all(h.start <= T0 + 3600 for h in until) and until[0].speaker == "Diane"  # the person the query names


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


# --- The lexical index on its own ----------------------------------------------------------


def turn(turn_id: str, text: str, *, speaker: str = "Bob", conversation: str = "c1", start: float = T0) -> Turn:
    return Turn(
        uid="alice",
        turn_id=turn_id,
        conversation_id=conversation,
        speaker=speaker,
        is_user=speaker == "me",
        start=start,
        end=start + 2,
        text=text,
    )


def scored(hits: list[IndexHit]) -> list[tuple[str, float]]:
    return [(h.turn_id, round(h.score, 12)) for h in hits]


@pytest.fixture
async def lexical(tmp_path: Path) -> AsyncIterator[LexicalIndex]:
    index = LexicalIndex(tmp_path)
    yield index
    await index.close()


def test_words_are_cut_and_stemmed_as_sqlite_fts5_porter_unicode61_does():
    # The expected terms are what FTS5 (tokenize='porter unicode61 remove_diacritics 2') stores.
    assert tokenize("Diane's meetings were RESCHEDULED; she lives in Zürich, near the café_bar.") == [
        "dian", "s", "meet", "were", "reschedul", "she", "live", "in", "zurich", "near", "the", "cafe", "bar",
    ]  # fmt: skip
    assert tokenize("caresses ponies agreed hopping conditional electrical") == [
        "caress", "poni", "agre", "hop", "condit", "electr",
    ]  # fmt: skip
    assert query_terms("Where does Diane live? Diane lives") == ["dian", "live"]  # stopwords out, stems once
    assert query_terms("where is it") == ["where", "is", "it"]  # only stopwords: keep them
    assert query_terms("?!") == []


async def test_bm25f_scores_a_turn_with_its_speaker_day_and_neighbours_by_hand(lexical: LexicalIndex):
    await lexical.upsert(
        [
            turn("a1", "apple banana", start=T0),  # c1: a1, a2, a3 in order
            turn("a2", "cherry tart", start=T0 + 10),
            turn("a3", "grape juice", start=T0 + 20),
            turn("b1", "melon", speaker="Apple", conversation="c2"),
        ]
    )
    w = LexicalWeights()  # own words 1, speaker 1, date 0.5, neighbours 0.5 and 0.5
    # Each turn's document: own words (2, or 1 for b1) + speaker (1 term) + date (3 terms, e.g. "5 June 2023")
    # + 0.5 x the words of each turn one and two places away in its conversation.
    lengths = {"a1": 2 + 1 + 1.5 + 0.5 * 2 + 0.5 * 2, "a2": 2 + 1 + 1.5 + 0.5 * 4, "a3": 2 + 1 + 1.5 + 2, "b1": 3.5}
    avgdl = sum(lengths.values()) / 4
    # "apple": own word of a1 (tf 1), neighbour of a2 (0.5) and of a3 (0.5), b1's speaker (1): df 4 of 4.
    idf = math.log(1 + 0.5 / 4.5)

    def bm25(tf: float, turn_id: str) -> float:
        return idf * tf * (w.k1 + 1) / (tf + w.k1 * (1 - w.b + w.b * lengths[turn_id] / avgdl))

    got = {h.turn_id: h.score for h in await lexical.query("alice", "apples", limit=10)}
    want = {"a1": bm25(1, "a1"), "b1": bm25(1, "b1"), "a2": bm25(0.5, "a2"), "a3": bm25(0.5, "a3")}
    assert got == pytest.approx(want)
    view = lexical.view_sync("alice", "apples", 10, LexicalWeights(speaker=0, date=0, near=0, far=0))
    assert [h.turn_id for h in view.hits] == ["a1"]  # plain BM25: the turn's own words only
    day = datetime.fromtimestamp(T0, tz=UTC).strftime("%B")
    dated = lexical.view_sync("alice", day, 10, w)
    assert len(dated.hits) == 4 and dated.days == [int(T0 // 86_400)]


def reference_scores(turns: list[Turn], query: str, w: LexicalWeights) -> dict[str, float]:
    """BM25F computed the slow way: every turn's document written out with its context, then scored."""
    by_conv: dict[str, list[Turn]] = {}
    for t in sorted(turns, key=lambda t: t.start):
        by_conv.setdefault(t.conversation_id, []).append(t)
    docs: dict[str, Counter[str]] = {}
    for conv in by_conv.values():
        for i, t in enumerate(conv):
            d = datetime.fromtimestamp(t.start, tz=UTC)
            tf: Counter[str] = Counter()
            parts = [(t.text, 1.0), (t.speaker, w.speaker), (f"{d.day} {d:%B %Y}", w.date)]
            parts += [(conv[j].text, w.near) for j in (i - 1, i + 1) if 0 <= j < len(conv)]
            parts += [(conv[j].text, w.far) for j in (i - 2, i + 2) if 0 <= j < len(conv)]
            for text, weight in parts:
                for term in content_terms(text):
                    tf[term] += weight
            docs[t.turn_id] = tf
    avgdl = sum(sum(d.values()) for d in docs.values()) / len(docs)
    out: dict[str, float] = {}
    for term in query_terms(query):
        df = sum(1 for d in docs.values() if d[term] > 0)
        if not df:
            continue
        idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        for turn_id, d in docs.items():
            if d[term] > 0:
                norm = w.k1 * (1 - w.b + w.b * sum(d.values()) / avgdl)
                out[turn_id] = out.get(turn_id, 0.0) + idf * d[term] * (w.k1 + 1) / (d[term] + norm)
    return out


async def test_context_follows_writes_out_of_order_replacements_and_deletes(tmp_path: Path):
    index = LexicalIndex(tmp_path)
    words = ["dentist", "Friday", "budget", "Lisbon", "piano", "garden", "Diane", "airport"]
    live: dict[str, Turn] = {}

    async def write(*turns: Turn) -> None:
        await index.upsert(list(turns))
        live.update({t.turn_id: t for t in turns})

    async def check(index: LexicalIndex) -> None:
        for query in ("dentist budget", "Friday Lisbon piano", "garden Diane", "airport"):
            got = {h.turn_id: h.score for h in await index.query("alice", query, limit=100)}
            assert got == pytest.approx(reference_scores(list(live.values()), query, LexicalWeights())), query

    await write(*(turn(f"t{i}", f"{words[i % 8]} and {words[(3 * i) % 8]}", start=T0 + 10 * i) for i in range(6)))
    await check(index)  # read from the file on first use
    await write(turn("t6", "the airport at last", start=T0 + 60))  # appended at the end of c1: linked at once
    await write(turn("t7", "Diane in the garden", start=T0 + 25))  # between t2 and t3: c1 is relinked
    await write(turn("u1", "piano lessons", conversation="c2", start=T0 + 5), turn("u2", "dentist", conversation="c2"))
    await check(index)
    await write(turn("t3", "Lisbon budget again", start=T0 + 30))  # replaced in place
    await index.delete("alice", ids=["t1"])
    live.pop("t1")
    await check(index)
    await index.close()
    reopened = LexicalIndex(tmp_path)  # read back from the file: the same documents
    await check(reopened)
    await reopened.close()


async def test_filters_and_ties(lexical: LexicalIndex):
    await lexical.upsert(
        [
            turn("t1", "the budget for Lisbon", speaker="Diane", conversation="c1", start=T0),
            turn("t2", "the budget for Lisbon", speaker="Sheila", conversation="c1", start=T0 + 100),
            turn("t3", "the budget for Lisbon", speaker="Diane", conversation="c2", start=T0 + 200),
            turn("t4", "nothing to see", speaker="Diane", conversation="c3", start=T0 + 300),  # alone: no neighbour
        ]
    )

    async def ids(**filters: Any) -> list[str]:
        return [h.turn_id for h in await lexical.query("alice", "budget", limit=10, **filters)]

    # t1 and t2 lend each other "budget" (neighbours in c1): equal scores, the latest turn first; then t3.
    assert await ids() == ["t2", "t1", "t3"]
    assert await ids(speaker="Diane") == ["t1", "t3"]
    assert await ids(speaker="diane") == []  # the index compares exact names; MemorySearch looks them up first
    assert await ids(conversation_id="c1") == ["t2", "t1"]
    assert await ids(since=T0 + 102) == ["t2", "t3"]  # end >= since: t2 ends at T0 + 102
    assert await ids(since=T0 + 103) == ["t3"]
    assert await ids(until=T0 + 100) == ["t2", "t1"]  # start <= until
    assert await ids(speaker="Diane", conversation_id="c2", since=T0, until=T0 + 250) == ["t3"]
    assert await ids(speaker="Nobody") == [] and await ids(conversation_id="nope") == []
    assert [h.turn_id for h in await lexical.query("alice", "budget", limit=1)] == ["t2"]
    assert await lexical.query("bob", "budget", limit=10) == []  # another user's turns are apart
    assert await lexical.speaker_name("alice", "SHEILA") == "Sheila"
    assert await lexical.speaker_name("alice", "Nobody") is None


async def test_updates_and_deletes_show_at_once_and_survive_reopening(tmp_path: Path):
    index = LexicalIndex(tmp_path)
    await index.upsert([turn(f"t{i}", f"note {i} about the dentist") for i in range(6)])
    assert len(await index.query("alice", "dentist", limit=10)) == 6  # loads this user's index
    await index.upsert([turn("t0", "the plumber comes on Monday"), turn("t9", "dentist again", speaker="Priya")])
    await index.delete("alice", ids=["t1", "missing"])
    hits = await index.query("alice", "dentist", limit=10)
    # t0 no longer says "dentist": found only through its neighbours t2 and t3, below every turn that says it
    assert {h.turn_id for h in hits[:5]} == {"t2", "t3", "t4", "t5", "t9"} and [h.turn_id for h in hits[5:]] == ["t0"]
    assert (await index.query("alice", "plumber", limit=10))[0].text == "the plumber comes on Monday"
    assert await index.speaker_name("alice", "priya") == "Priya"
    await index.delete("alice", ids=["t9"])
    assert await index.speaker_name("alice", "priya") is None  # no turn of Priya's is left
    await index.upsert([turn("t7", "dentist in the other conversation", conversation="c2")])
    await index.delete("alice", conversation_id="c1")
    assert [h.turn_id for h in await index.query("alice", "dentist", limit=10)] == ["t7"]
    assert await index.count("alice") == 1
    await index.upsert([turn("t8", "the dentist is on Friday", conversation="c3", start=T0 + 60)])
    before = scored(await index.query("alice", "dentist Friday", limit=10))
    await index.close()

    reopened = LexicalIndex(tmp_path)  # written to disk, read back on first use
    assert scored(await reopened.query("alice", "dentist Friday", limit=10)) == before
    assert await reopened.count("alice") == 2
    await reopened.delete("alice")
    assert await reopened.query("alice", "dentist", limit=10) == [] and await reopened.count("alice") == 0
    await reopened.close()


async def test_compacting_dead_rows_changes_no_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(memory.search.lexical_shard, "_COMPACT_MIN", 4)
    index = LexicalIndex(tmp_path)
    await index.upsert([turn(f"t{i}", f"call Diane about item {i}", start=T0 + i) for i in range(20)])
    await index.query("alice", "Diane", limit=1)
    await index.upsert([turn(f"t{i}", f"email Sheila about item {i}", start=T0 + i) for i in range(0, 20, 2)])
    await index.delete("alice", ids=[f"t{i}" for i in range(1, 12, 2)])
    shard = index._shards["alice"]
    assert shard.n == shard.live == 14  # the replaced and deleted rows are gone from memory
    results = [scored(await index.query("alice", q, limit=30)) for q in ("Diane", "Sheila item", "item 7")]
    await index.close()
    reopened = LexicalIndex(tmp_path)
    assert [scored(await reopened.query("alice", q, limit=30)) for q in ("Diane", "Sheila item", "item 7")] == results
    await reopened.close()


async def test_query_in_the_event_loop_or_a_worker_thread_gives_the_same_hits(
    lexical: LexicalIndex, monkeypatch: pytest.MonkeyPatch
):
    await lexical.upsert(sample_turns("alice"))
    first = await lexical.query("alice", "Diane New Jersey", limit=5)  # loads in a worker thread
    inline = await lexical.query("alice", "Diane New Jersey", limit=5)  # in memory: runs right here
    monkeypatch.setattr(memory.search.lexical, "_INLINE_POSTINGS", 0)
    threaded = await lexical.query("alice", "Diane New Jersey", limit=5)
    assert scored(first) == scored(inline) == scored(threaded) and first[0].text == "This is Diane in New Jersey."


async def test_writes_are_on_disk_before_they_return(lexical: LexicalIndex):
    await lexical.upsert([turn("t1", "the dentist moved my appointment")])
    with sqlite3.connect(lexical.path) as other:
        [(stored,)] = other.execute("SELECT text FROM turns WHERE uid = 'alice'").fetchall()
    assert "dentist" not in stored, "the text is encrypted on disk"
    assert installed().decrypt_text(stored, memory.search.lexical.TEXT_PLACE) == "the dentist moved my appointment"


async def test_a_file_with_the_old_fts5_table_is_upgraded(tmp_path: Path):
    old = sqlite3.connect(tmp_path / "lexical.db")
    try:
        old.executescript(
            """
            CREATE TABLE turns (id INTEGER PRIMARY KEY, uid TEXT NOT NULL, turn_id TEXT NOT NULL,
                conversation_id TEXT NOT NULL, speaker TEXT NOT NULL, is_user INTEGER NOT NULL,
                start REAL NOT NULL, "end" REAL NOT NULL, text TEXT NOT NULL, UNIQUE (uid, turn_id));
            CREATE VIRTUAL TABLE turns_fts USING fts5(text, speaker, content='turns', content_rowid='id');
            CREATE TRIGGER turns_ai AFTER INSERT ON turns BEGIN
                INSERT INTO turns_fts (rowid, text, speaker) VALUES (new.id, new.text, new.speaker);
            END;
            INSERT INTO turns (uid, turn_id, conversation_id, speaker, is_user, start, "end", text)
                VALUES ('alice', 't1', 'c1', 'Diane', 0, 1.0, 2.0, 'Diane lives in New Jersey');
            """
        )
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no FTS5")
    old.close()
    index = LexicalIndex(tmp_path)
    await index.upsert([turn("t2", "Sheila lives in Texas")])
    assert {h.turn_id for h in await index.query("alice", "lives", limit=5)} == {"t1", "t2"}
    tables = {r[0] for r in index._db.execute("SELECT name FROM sqlite_master")}
    assert "turns_fts" not in tables and "turns_ai" not in tables
    await index.close()


async def test_turns_without_words_are_kept_but_never_found(tmp_path: Path):
    index = LexicalIndex(tmp_path)
    await index.upsert([turn("t1", "?!", speaker=""), turn("t2", "...", speaker="")])
    await index.close()
    reopened = LexicalIndex(tmp_path)
    assert await reopened.query("alice", "anything", limit=5) == [] and await reopened.count("alice") == 2
    await reopened.upsert([turn("t3", "now something", speaker="", conversation="c2")])  # no neighbours
    assert [h.turn_id for h in await reopened.query("alice", "something", limit=5)] == ["t3"]
    await reopened.close()
