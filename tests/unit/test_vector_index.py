"""The vector index contract, run against every backend: local files, and Pinecone's real SDK
against a local server speaking its data-plane REST API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from app.settings import SettingsError, load_settings
from core.errors import VectorIndexError
from memory.memory_settings import VectorIndexSettings
from memory.search.index_choice import load_index
from memory.search.local_index import LocalVectorIndex
from memory.search.pgvector_index import PgVectorIndex
from memory.search.pinecone_index import PineconeIndex
from memory.search.vector_index import IndexItem, VectorIndex
from tests.memory_support import FakePinecone

DIM = 16


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def item(uid: str, n: int, *, conversation: str = "c1", speaker: str = "Diane", start: float = 1000.0) -> IndexItem:
    return IndexItem(
        uid=uid,
        turn_id=f"t{n}",
        conversation_id=conversation,
        speaker=speaker,
        is_user=speaker == "me",
        start=start + 10 * n,
        end=start + 10 * n + 5,
        text=f"turn {n}",
        vector=unit(n),
    )


@pytest.fixture(scope="module")
def pinecone_server() -> Iterator[FakePinecone]:
    with FakePinecone() as server:
        yield server


@pytest.fixture(params=["local", "pinecone", "pgvector"])
async def index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorIndex]:
    if request.param == "local":
        backend: VectorIndex = LocalVectorIndex(tmp_path / "index")
    elif request.param == "pgvector":
        url: str = request.getfixturevalue("postgres_url")
        backend = load_index(VectorIndexSettings(backend="pgvector"), tmp_path, url)
        assert isinstance(backend, PgVectorIndex)
        for uid in ("alice", "bob", "eve"):  # the database outlives one test
            await backend.delete(uid)
    else:
        server: FakePinecone = request.getfixturevalue("pinecone_server")
        server.namespaces.clear()
        server.dimension = None
        backend = load_index(
            VectorIndexSettings(backend="pinecone", pinecone_api_key=server.api_key, pinecone_host=server.url),
            tmp_path,
        )
        assert isinstance(backend, PineconeIndex)
    yield backend
    await backend.close()


async def test_upsert_query_returns_nearest_first_with_metadata(index: VectorIndex):
    await index.upsert([item("alice", n) for n in range(20)] + [item("bob", n) for n in range(5)])
    assert await index.count("alice") == 20 and await index.count("bob") == 5 and await index.count("eve") == 0
    hits = await index.query("alice", unit(7), limit=3)
    assert len(hits) == 3
    assert hits[0].turn_id == "t7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].score >= hits[1].score >= hits[2].score
    first = hits[0]
    assert (first.conversation_id, first.speaker, first.is_user, first.start, first.end, first.text) == (
        "c1",
        "Diane",
        False,
        1070.0,
        1075.0,
        "turn 7",
    )
    assert await index.query("eve", unit(7), limit=3) == []


async def test_upsert_replaces_a_known_turn(index: VectorIndex):
    await index.upsert([item("alice", n) for n in range(5)])
    moved = item("alice", 2, speaker="Sheila")
    moved.vector = unit(99)
    moved.text = "relabelled"
    await index.upsert([moved])
    assert await index.count("alice") == 5
    hits = await index.query("alice", unit(99), limit=1)
    assert (hits[0].turn_id, hits[0].speaker, hits[0].text) == ("t2", "Sheila", "relabelled")


async def test_filters_by_speaker_conversation_and_time(index: VectorIndex):
    items = [
        item("alice", n, conversation="c1" if n < 10 else "c2", speaker="me" if n % 2 else "Diane") for n in range(20)
    ]
    await index.upsert(items)
    q = unit(3)
    assert {h.turn_id for h in await index.query("alice", q, limit=50, speaker="me")} == {
        f"t{n}" for n in range(1, 20, 2)
    }
    assert all(h.is_user for h in await index.query("alice", q, limit=50, speaker="me"))
    assert {h.conversation_id for h in await index.query("alice", q, limit=50, conversation_id="c2")} == {"c2"}
    assert len(await index.query("alice", q, limit=50, conversation_id="c2")) == 10
    # Turn n spans [1000 + 10n, 1005 + 10n]; since/until keep turns overlapping the span.
    span = await index.query("alice", q, limit=50, since=1052.0, until=1080.0)
    assert {h.turn_id for h in span} == {"t5", "t6", "t7", "t8"}
    both = await index.query("alice", q, limit=50, speaker="Diane", conversation_id="c1", since=1040.0)
    assert {h.turn_id for h in both} == {"t4", "t6", "t8"}
    assert await index.query("alice", q, limit=50, speaker="Nobody") == []
    assert await index.query("alice", q, limit=50, conversation_id="none") == []


async def test_fetch_returns_stored_turns_with_vectors(index: VectorIndex):
    await index.upsert([item("alice", n) for n in range(4)])
    fetched = await index.fetch("alice", ["t3", "missing", "t1"])
    assert [f.turn_id for f in fetched] == ["t3", "t1"]
    assert np.allclose(fetched[0].vector, unit(3), atol=1e-6)
    assert (fetched[0].uid, fetched[0].conversation_id, fetched[0].text) == ("alice", "c1", "turn 3")
    assert await index.fetch("bob", ["t3"]) == []


async def test_delete_by_ids_conversation_and_all(index: VectorIndex):
    await index.upsert([item("alice", n, conversation="c1" if n < 6 else "c2") for n in range(10)])
    await index.upsert([item("bob", n) for n in range(3)])
    await index.delete("alice", ids=["t0", "t1", "nope"])
    assert await index.count("alice") == 8
    assert "t0" not in {h.turn_id for h in await index.query("alice", unit(0), limit=10)}
    await index.delete("alice", conversation_id="c2")
    remaining = await index.query("alice", unit(0), limit=10)
    assert {h.turn_id for h in remaining} == {"t2", "t3", "t4", "t5"}
    await index.delete("alice")
    assert await index.count("alice") == 0 and await index.query("alice", unit(0), limit=10) == []
    assert await index.count("bob") == 3  # other users untouched


async def test_local_index_persists_and_reloads(tmp_path: Path):
    first = LocalVectorIndex(tmp_path)
    await first.upsert([item("alice", n) for n in range(30)])
    await first.delete("alice", ids=["t4"])
    await first.close()
    again = LocalVectorIndex(tmp_path)
    assert await again.count("alice") == 29
    hits = await again.query("alice", unit(12), limit=2, since=1100.0)
    assert hits[0].turn_id == "t12" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert await again.query("alice", unit(4), limit=30) != [] and "t4" not in {
        h.turn_id for h in await again.query("alice", unit(4), limit=30)
    }
    with pytest.raises(VectorIndexError, match="does not fit the index of 16-d vectors"):
        await again.upsert([msgspec.structs.replace(item("alice", 99), vector=np.ones(8, dtype=np.float32))])
    await again.close()


async def test_pinecone_layout_matches_the_omi_backend(pinecone_server: FakePinecone, tmp_path: Path):
    """One namespace per uid, ids ``<uid>-<turn_id>``, and the OMI metadata fields."""
    pinecone_server.namespaces.clear()
    pinecone_server.dimension = None
    index = PineconeIndex(api_key=pinecone_server.api_key, host=pinecone_server.url)
    await index.upsert([item("alice", 1, speaker="me"), item("bob", 2)])
    assert set(pinecone_server.namespaces) == {"alice", "bob"}
    stored = pinecone_server.namespaces["alice"]["alice-t1"]
    assert stored["metadata"] == {
        "uid": "alice",
        "conversation_id": "c1",
        "speaker": "me",
        "is_user": True,
        "start": 1010.0,
        "end": 1015.0,
        "text": "turn 1",
    }
    bad = PineconeIndex(api_key="wrong", host=pinecone_server.url)
    with pytest.raises(VectorIndexError, match="Pinecone query failed"):
        await bad.query("alice", unit(1), limit=1)
    await index.close()


def test_settings_for_pinecone():
    assert load_settings({}, env_file=None).vector_index.backend == "local"
    with pytest.raises(SettingsError, match="VECTOR_INDEX=pinecone needs PINECONE_API_KEY"):
        load_settings({"VECTOR_INDEX": "pinecone"}, env_file=None)
    with pytest.raises(SettingsError, match="needs PINECONE_HOST or PINECONE_INDEX"):
        load_settings({"VECTOR_INDEX": "pinecone", "PINECONE_API_KEY": "k"}, env_file=None)
