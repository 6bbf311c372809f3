"""The voice profile store's contract, run against every database we support."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest

from core.errors import ConflictError, NotFoundError
from memory.store.conversation_store import ConversationStore
from memory.store.voice_profiles import EMBEDDING_DIM, MAX_WEIGHT_S, SpeakerStore


@pytest.fixture
async def speakers(database_url: str) -> AsyncIterator[SpeakerStore]:
    conversations = await ConversationStore.open(database_url)
    yield SpeakerStore(conversations.engine)
    await conversations.close()


@pytest.fixture
def uid() -> str:
    return f"u-{uuid.uuid4()}"


def voice(seed: int) -> np.ndarray:
    """A random unit vector standing in for one person's voice embedding."""
    v = np.random.default_rng(seed).standard_normal(EMBEDDING_DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


async def test_enroll_stores_a_profile_and_the_api_shape_hides_the_embedding(speakers: SpeakerStore, uid: str):
    profile = await speakers.enroll(uid, name="  Diane   Smith ", embedding=voice(1) * 3, seconds=12.5)
    assert (profile.name, profile.is_user, profile.seconds) == ("Diane Smith", False, 12.5)
    loaded = await speakers.get(uid, profile.id)
    assert loaded.embedding.dtype == np.float32 and loaded.embedding.shape == (EMBEDDING_DIM,)
    np.testing.assert_allclose(loaded.embedding, voice(1), atol=1e-6)
    api = loaded.to_api()
    assert set(api) == {"id", "name", "is_user", "seconds", "created_at", "updated_at"}
    assert api["created_at"].endswith("+00:00") and api["name"] == "Diane Smith"


async def test_the_wearer_has_one_profile_that_enrolling_again_improves(speakers: SpeakerStore, uid: str):
    first = await speakers.enroll(uid, is_user=True, embedding=voice(1), seconds=10)
    assert (first.name, first.is_user) == ("me", True)
    await speakers.rename(uid, first.id, "Alex")
    second = await speakers.enroll(uid, is_user=True, embedding=voice(2), seconds=30)
    assert second.id == first.id and second.name == "Alex" and second.seconds == 40
    np.testing.assert_allclose(second.embedding, unit(10 * voice(1) + 30 * voice(2)), atol=1e-5)
    assert [p.id for p in await speakers.list(uid)] == [first.id]


async def test_enrolling_a_known_name_merges_without_regard_to_case(speakers: SpeakerStore, uid: str):
    diane = await speakers.enroll(uid, name="Diane", embedding=voice(1), seconds=5)
    again = await speakers.enroll(uid, name="diane", embedding=voice(2), seconds=15)
    assert again.id == diane.id and again.name == "Diane" and again.seconds == 20
    np.testing.assert_allclose(again.embedding, unit(5 * voice(1) + 15 * voice(2)), atol=1e-5)
    bob = await speakers.enroll(uid, name="Bob", embedding=voice(3), seconds=5)
    listed = await speakers.list(uid)
    assert [p.name for p in listed] == ["Bob", "Diane"]
    me = await speakers.enroll(uid, is_user=True, embedding=voice(4), seconds=5)
    assert [p.id for p in await speakers.list(uid)] == [me.id, bob.id, diane.id]  # the wearer first


async def test_concurrent_enrollments_of_one_name_make_one_profile(speakers: SpeakerStore, uid: str):
    results = await asyncio.gather(
        *(speakers.enroll(uid, name="Eve", embedding=voice(i), seconds=1) for i in range(4)),
        *(speakers.enroll(uid, is_user=True, embedding=voice(i), seconds=1) for i in range(4)),
    )
    assert len({p.id for p in results}) == 2
    profiles = await speakers.list(uid)
    assert [(p.name, p.is_user, p.seconds) for p in profiles] == [("me", True, 4.0), ("Eve", False, 4.0)]


async def test_bad_input_is_refused(speakers: SpeakerStore, uid: str):
    with pytest.raises(ValueError, match="needs a name"):
        await speakers.enroll(uid, embedding=voice(1), seconds=3)
    with pytest.raises(ValueError, match="empty"):
        await speakers.enroll(uid, name="   ", embedding=voice(1), seconds=3)
    with pytest.raises(ValueError, match="at most 100"):
        await speakers.enroll(uid, name="x" * 101, embedding=voice(1), seconds=3)
    with pytest.raises(ValueError, match="256 values"):
        await speakers.enroll(uid, name="Ann", embedding=np.ones(10, np.float32), seconds=3)
    with pytest.raises(ValueError, match="not all zeros"):
        await speakers.enroll(uid, name="Ann", embedding=np.zeros(EMBEDDING_DIM, np.float32), seconds=3)
    with pytest.raises(ValueError, match="positive"):
        await speakers.enroll(uid, name="Ann", embedding=voice(1), seconds=0)
    assert await speakers.list(uid) == []


async def test_rename_and_delete(speakers: SpeakerStore, uid: str):
    ann = await speakers.enroll(uid, name="Ann", embedding=voice(1), seconds=3)
    bob = await speakers.enroll(uid, name="Bob", embedding=voice(2), seconds=3)
    renamed = await speakers.rename(uid, ann.id, "Annie")
    assert renamed.name == "Annie" and renamed.updated_at >= ann.updated_at
    assert (await speakers.rename(uid, ann.id, "ANNIE")).name == "ANNIE"  # its own name in another case
    with pytest.raises(ConflictError, match="'bob' already exists"):
        await speakers.rename(uid, ann.id, "bob")
    with pytest.raises(NotFoundError):
        await speakers.rename(uid, str(uuid.uuid4()), "Zed")
    await speakers.delete(uid, bob.id)
    with pytest.raises(NotFoundError):
        await speakers.get(uid, bob.id)
    with pytest.raises(NotFoundError):
        await speakers.delete(uid, bob.id)
    assert [p.name for p in await speakers.list(uid)] == ["ANNIE"]
    # The freed name can be enrolled again, as a new person.
    assert (await speakers.enroll(uid, name="Bob", embedding=voice(3), seconds=3)).id != bob.id


async def test_absorb_caps_the_weight_of_the_profile_so_it_keeps_adapting(speakers: SpeakerStore, uid: str):
    veteran = await speakers.enroll(uid, name="Vera", embedding=voice(1), seconds=1000)
    improved = await speakers.absorb(uid, veteran.id, voice(2), 100)
    assert improved.seconds == 1100
    np.testing.assert_allclose(improved.embedding, unit(MAX_WEIGHT_S * voice(1) + 100 * voice(2)), atol=1e-5)
    assert (await speakers.get(uid, veteran.id)).seconds == 1100
    novice = await speakers.enroll(uid, name="Nina", embedding=voice(3), seconds=20)
    better = await speakers.absorb(uid, novice.id, voice(4), 5)
    np.testing.assert_allclose(better.embedding, unit(20 * voice(3) + 5 * voice(4)), atol=1e-5)


async def test_match_returns_the_most_similar_profile_above_the_threshold(speakers: SpeakerStore, uid: str):
    assert await speakers.match(uid, voice(1), 0.5) is None  # nobody enrolled
    ann = await speakers.enroll(uid, name="Ann", embedding=voice(1), seconds=3)
    await speakers.enroll(uid, name="Bob", embedding=voice(2), seconds=3)
    near_ann = unit(voice(1) + 0.3 * voice(9))
    found = await speakers.match(uid, near_ann, 0.75)
    assert found is not None
    profile, score = found
    assert profile.id == ann.id and score == pytest.approx(float(near_ann @ voice(1)), abs=1e-5)
    assert await speakers.match(uid, near_ann, score + 0.01) is None
    assert await speakers.match(uid, voice(7), 0.5) is None  # a stranger's voice


async def test_users_only_see_and_change_their_own(speakers: SpeakerStore, uid: str):
    mine = await speakers.enroll(uid, name="Ann", embedding=voice(1), seconds=3)
    other = f"{uid}-other"
    assert await speakers.list(other) == []
    assert await speakers.match(other, voice(1), 0.5) is None
    for call in (
        speakers.get(other, mine.id),
        speakers.rename(other, mine.id, "Mallory"),
        speakers.delete(other, mine.id),
        speakers.absorb(other, mine.id, voice(2), 3),
    ):
        with pytest.raises(NotFoundError):
            await call
    # The same name, and a wearer, for another user are separate profiles.
    theirs = await speakers.enroll(other, name="Ann", embedding=voice(2), seconds=3)
    assert theirs.id != mine.id
    await speakers.enroll(other, is_user=True, embedding=voice(3), seconds=3)
    await speakers.enroll(uid, is_user=True, embedding=voice(4), seconds=3)
    unchanged = await speakers.get(uid, mine.id)
    assert (unchanged.name, unchanged.seconds) == ("Ann", 3)
    np.testing.assert_allclose(unchanged.embedding, voice(1), atol=1e-6)
