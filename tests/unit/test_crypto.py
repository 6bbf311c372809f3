"""Encryption at rest: the keyring, encrypted columns on real SQLite and Postgres, the index files, unlocking."""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
from sqlalchemy import text

from app.ops.keys import read_keyring, unlock, write_key_file
from app.settings import Settings, SettingsError, load_settings
from core.errors import EncryptionError, MissingKeyError
from core.segments import TranscriptSegment
from memory import rekey
from memory.search.lexical import LexicalIndex, Turn
from memory.search.local_index import LocalVectorIndex
from memory.search.vector_index import IndexItem
from memory.store.conversation_store import ConversationStore
from memory.store.crypto import Keyring, encode_key, install, installed, key_id, key_id_of
from memory.store.day_summaries import DaySummaryStore
from memory.store.voice_profiles import SpeakerStore

SECRET = "the lighthouse keeper hid the emerald under the stairs"


@pytest.fixture
def keys() -> Iterator[Keyring]:
    """A fresh keyring installed for the test, then the session's put back."""
    before = installed()
    keyring = Keyring.generate()
    install(keyring)
    yield keyring
    install(before)


# --- The keyring ---------------------------------------------------------------------------


def test_text_and_bytes_round_trip_with_a_fresh_nonce_each_time():
    keyring = Keyring.generate()
    sealed = keyring.encrypt_text(SECRET + " ✓ é", "segments.text")
    assert SECRET not in sealed and sealed.startswith(f"enc:v1:{keyring.current_id}:")
    assert keyring.decrypt_text(sealed, "segments.text") == SECRET + " ✓ é"
    assert keyring.encrypt_text(SECRET, "segments.text") != keyring.encrypt_text(SECRET, "segments.text")

    vector = np.random.default_rng(1).standard_normal(256).astype("<f4").tobytes()
    blob = keyring.encrypt_bytes(vector, "speaker_profiles.embedding")
    assert vector not in blob and len(blob) == len(vector) + 20 + 12 + 16  # header, nonce, tag
    assert keyring.decrypt_bytes(blob, "speaker_profiles.embedding") == vector
    assert key_id_of(blob) == key_id_of(sealed) == keyring.current_id == key_id(keyring.current)


def test_an_altered_value_fails_its_check_instead_of_reading_as_garbage():
    keyring = Keyring.generate()
    sealed = keyring.encrypt_bytes(SECRET.encode(), "segments.text")
    for i in (25, len(sealed) // 2, len(sealed) - 1):  # the nonce, the ciphertext, the tag
        altered = sealed[:i] + bytes([sealed[i] ^ 1]) + sealed[i + 1 :]
        with pytest.raises(EncryptionError, match="fails its check"):
            keyring.decrypt_bytes(altered, "segments.text")
    with pytest.raises(EncryptionError, match="too short"):
        keyring.decrypt_bytes(sealed[:30], "segments.text")
    as_text = keyring.encrypt_text(SECRET, "segments.text")
    with pytest.raises(EncryptionError):
        keyring.decrypt_text(as_text[:-6] + "AAAAAA", "segments.text")


def test_a_value_moved_to_another_place_does_not_decrypt():
    keyring = Keyring.generate()
    sealed = keyring.encrypt_text(SECRET, "segments.text")
    with pytest.raises(EncryptionError, match=r"day_summaries\.summary"):
        keyring.decrypt_text(sealed, "day_summaries.summary")
    relabelled = sealed.replace(keyring.current_id, "0" * 12)  # the header is bound in too
    with pytest.raises(MissingKeyError):
        keyring.decrypt_text(relabelled, "segments.text")


def test_a_wrong_key_is_told_apart_from_a_damaged_value():
    sealed = Keyring.generate().encrypt_text(SECRET, "segments.text")
    other = Keyring.generate()
    with pytest.raises(MissingKeyError) as missing:
        other.decrypt_text(sealed, "segments.text")
    assert missing.value.key_id == key_id_of(sealed) and missing.value.key_id not in other


def test_values_written_before_encryption_read_as_they_are():
    keyring = Keyring.generate()
    assert keyring.decrypt_text("said before encryption existed", "segments.text") == "said before encryption existed"
    raw = np.ones(256, dtype="<f4").tobytes()
    assert keyring.decrypt_bytes(raw, "speaker_profiles.embedding") == raw
    assert key_id_of("said before") is None and not keyring.is_current("said before")


def test_a_rotated_keyring_reads_old_values_and_writes_new_ones():
    old = Keyring.generate()
    sealed = old.encrypt_text(SECRET, "segments.text")
    rotated = Keyring(Keyring.new_key(), old.by_id().values())
    assert rotated.ids == [rotated.current_id, old.current_id]
    assert rotated.decrypt_text(sealed, "segments.text") == SECRET
    assert not rotated.is_current(sealed)
    assert rotated.is_current(rotated.encrypt_text(SECRET, "segments.text"))
    with pytest.raises(ValueError, match="32 bytes"):
        Keyring(b"short")


# --- Columns of the store, on SQLite and Postgres -------------------------------------------


@pytest.fixture
async def store(database_url: str, keys: Keyring) -> AsyncIterator[ConversationStore]:
    opened = await ConversationStore.open(database_url)
    yield opened
    await opened.close()


async def test_what_was_said_and_voices_are_stored_encrypted_and_read_back(store: ConversationStore, keys: Keyring):
    uid = f"crypto-{keys.current_id}"
    segments = [TranscriptSegment(text=SECRET, start=0.0, end=2.0, translations=[{"lang": "fr", "text": "phare"}])]
    conversation = await store.add_completed(
        uid=uid, source="omi", language="en", started_at=1.0, segments=segments, now=2.0
    )
    structured = {"title": "Lighthouse emerald", "overview": SECRET}
    await store.put_completed(msgspec.structs.replace(conversation, structured=structured))
    voice = np.random.default_rng(7).standard_normal(256).astype(np.float32)
    profile = await SpeakerStore(store.engine).enroll(uid, name="Keeper", is_user=False, embedding=voice, seconds=4.0)
    await DaySummaryStore(store.engine).add(uid, created_at=5.0, summary=SECRET, summary_json={"note": SECRET})

    got = await store.get(uid, conversation.id)
    assert got.segments[0].text == SECRET and got.segments[0].translations == [{"lang": "fr", "text": "phare"}]
    assert got.structured == {"title": "Lighthouse emerald", "overview": SECRET}
    [listed] = await SpeakerStore(store.engine).list(uid)
    assert np.allclose(listed.embedding, voice / np.linalg.norm(voice), atol=1e-6)
    summaries, _ = await DaySummaryStore(store.engine).page(uid, limit=5, offset=0)
    assert [(s.summary, s.summary_json) for s in summaries] == [(SECRET, {"note": SECRET})]

    async with store.engine.connect() as conn:  # as stored, bypassing the column types
        raw = [
            *(
                await conn.execute(
                    text("SELECT text, translations FROM segments WHERE conversation_id = :c"), {"c": got.id}
                )
            ).one(),
            (await conn.execute(text("SELECT structured FROM conversations WHERE id = :c"), {"c": got.id})).scalar(),
            *(
                await conn.execute(text("SELECT summary, summary_json FROM day_summaries WHERE uid = :u"), {"u": uid})
            ).one(),
        ]
        blob = (
            await conn.execute(text("SELECT embedding FROM speaker_profiles WHERE id = :i"), {"i": profile.id})
        ).scalar()
    for value in raw:
        stored = value if isinstance(value, str) else json.dumps(value)
        assert "lighthouse" not in stored.lower() and "phare" not in stored, stored
        assert f"enc:v1:{keys.current_id}:" in stored
    assert bytes(blob).startswith(f"enc:v1:{keys.current_id}:".encode())
    assert (voice / np.linalg.norm(voice)).astype("<f4").tobytes() not in bytes(blob)


# --- The index files, and rotation over everything --------------------------------------------


def _seed_legacy(path: Path, conversation_id: str) -> None:
    """Rows as a version without encryption wrote them: plaintext."""
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "UPDATE segments SET text = ?, translations = '[]' WHERE conversation_id = ?", (SECRET, conversation_id)
        )
        db.execute(
            "UPDATE conversations SET structured = ? WHERE id = ?", (json.dumps({"title": SECRET}), conversation_id)
        )
    db.close()


async def test_rotation_reencrypts_every_place_including_plaintext_from_before(tmp_path: Path, keys: Keyring):
    store = await ConversationStore.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    index_dir = tmp_path / "index"
    vectors, lexical = LocalVectorIndex(index_dir), LexicalIndex(index_dir)
    try:
        segment = TranscriptSegment(text="placeholder", start=0.0, end=1.0)
        conversation = await store.add_completed(
            uid="u", source="omi", language="en", started_at=1.0, segments=[segment], now=2.0
        )
        _seed_legacy(tmp_path / "db.sqlite", conversation.id)
        assert (await store.get("u", conversation.id)).segments[0].text == SECRET, "plaintext reads as it is"
        vector = np.full(8, 0.5, dtype=np.float32)
        await vectors.upsert([IndexItem(uid="u", turn_id="t", conversation_id=conversation.id, speaker="Bob",
                                        is_user=False, start=0.0, end=1.0, text=SECRET, vector=vector)])  # fmt: skip
        await lexical.upsert([Turn(uid="u", turn_id="t", conversation_id=conversation.id, speaker="Bob",
                                   is_user=False, start=0.0, end=1.0, text=SECRET)])  # fmt: skip
        for path in (index_dir / "vectors.db", index_dir / "lexical.db"):
            with sqlite3.connect(path) as db:
                assert all("lighthouse" not in str(row) for row in db.execute("SELECT * FROM turns")), path
        before = await rekey.census(store.engine, index_dir)
        assert before["segments.text"] == {rekey.PLAINTEXT: 1}
        assert before["index/vectors.db:turns.vector"] == {keys.current_id: 1}

        rotated = Keyring(Keyring.new_key(), keys.by_id().values())
        install(rotated)
        seen: list[int] = []
        rewritten = await rekey.rotate(store.engine, index_dir, progress=seen.append)
        after = await rekey.census(store.engine, index_dir)
        assert rewritten == sum(sum(c.values()) for c in before.values())
        assert sum(seen) == await rekey.count_rows(store.engine, index_dir), "every row is looked at once"
        assert all(set(used) == {rotated.current_id} for used in after.values() if used), after
        assert await rekey.rotate(store.engine, index_dir) == 0, "nothing is left to re-encrypt"

        install(Keyring(rotated.current))  # the old key is gone: everything still reads
        assert (await store.get("u", conversation.id)).structured == {"title": SECRET}
        reopened = LocalVectorIndex(index_dir)
        [item] = await reopened.fetch("u", ["t"])
        assert item.text == SECRET and np.array_equal(item.vector, vector)
        await reopened.close()
        relexed = LexicalIndex(index_dir)
        assert [h.text for h in await relexed.query("u", "emerald", limit=3)] == [SECRET]
        await relexed.close()
    finally:
        await vectors.close()
        await lexical.close()
        await store.close()


# --- Keys from the settings ------------------------------------------------------------------


def settings_for(data_dir: Path, **env: str) -> Settings:
    return load_settings({"DATA_DIR": str(data_dir), **env}, env_file=None)


async def open_store(data_dir: Path) -> ConversationStore:
    return await ConversationStore.open(f"sqlite+aiosqlite:///{data_dir / 'omi-letta.db'}")


async def test_first_start_writes_a_private_key_file_that_later_starts_reuse(tmp_path: Path, keys: Keyring):
    settings = settings_for(tmp_path / "data")
    store = await open_store(tmp_path / "data")
    try:
        first = await unlock(settings, store.engine)
        path = tmp_path / "data" / "keys" / "omi-letta.key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert json.loads(path.read_text())["current"] == first.current_id
        assert installed() is first
        await store.add_completed(
            uid="u",
            source="omi",
            language="en",
            started_at=1.0,
            segments=[TranscriptSegment(text=SECRET, start=0.0, end=1.0)],
            now=2.0,
        )
        again = await unlock(settings, store.engine)
        assert again.current_id == first.current_id
    finally:
        await store.close()


async def test_a_key_that_does_not_fit_the_data_stops_startup_naming_the_setting(tmp_path: Path, keys: Keyring):
    data = tmp_path / "data"
    store = await open_store(data)
    try:
        written = await unlock(settings_for(data), store.engine)
        await store.add_completed(
            uid="u",
            source="omi",
            language="en",
            started_at=1.0,
            segments=[TranscriptSegment(text=SECRET, start=0.0, end=1.0)],
            now=2.0,
        )
        wrong = encode_key(Keyring.new_key())
        with pytest.raises(SettingsError, match=f"{written.current_id}, and ENCRYPTION_KEY holds only") as refused:
            await unlock(settings_for(data, ENCRYPTION_KEY=wrong), store.engine)
        assert "does not match" in str(refused.value) and wrong not in str(refused.value)
        elsewhere = tmp_path / "elsewhere.key"
        with pytest.raises(SettingsError, match="there is no key"):
            await unlock(settings_for(data, ENCRYPTION_KEY_FILE=str(elsewhere)), store.engine)
        assert not elsewhere.exists(), "no new key is made for data that has one"
        # The file's key given as ENCRYPTION_KEY, or as an old key beside a new one, opens the data.
        current = encode_key(written.current)
        assert (await unlock(settings_for(data, ENCRYPTION_KEY=current), store.engine)).current_id == written.current_id
        both = settings_for(data, ENCRYPTION_KEY=wrong, ENCRYPTION_OLD_KEYS=current)
        assert written.current_id in (await unlock(both, store.engine)).ids
        assert (await store.keys(uid="u"))[0][2] == 1
    finally:
        await store.close()


def test_malformed_keys_are_refused_by_name(tmp_path: Path):
    with pytest.raises(SettingsError, match="ENCRYPTION_KEY: an encryption key must be 32 bytes"):
        settings_for(tmp_path, ENCRYPTION_KEY=encode_key(b"x" * 16))
    with pytest.raises(SettingsError, match="ENCRYPTION_OLD_KEYS: an encryption key must be base64"):
        settings_for(tmp_path, ENCRYPTION_OLD_KEYS="not base64!")
    broken = tmp_path / "broken.key"
    broken.write_text("{not json")
    with pytest.raises(SettingsError, match=f"ENCRYPTION_KEY_FILE={broken} cannot be read"):
        read_keyring(settings_for(tmp_path, ENCRYPTION_KEY_FILE=str(broken)))
    keyring = Keyring(Keyring.new_key(), [Keyring.new_key()])
    write_key_file(tmp_path / "ok.key", keyring)
    read = read_keyring(settings_for(tmp_path, ENCRYPTION_KEY_FILE=str(tmp_path / "ok.key")))
    assert read is not None and read.by_id() == keyring.by_id()
