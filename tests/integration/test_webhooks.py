"""The OMI cloud's developer webhooks on a real server, with the payloads of the OMI protocol notes (§3.2–3.5).

URLs are built as the cloud builds them: the user's URL (with ``?key=olt_…``) and then
``?uid=…`` appended, a second ``?`` and all.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ingest.decode import load_audio_file
from tests.integration.test_live import listening
from tests.support import ADMIN_KEY, SHARED_DATA, ServerProcess, Turn, normalize, token

SAMPLE = SHARED_DATA / "pyannote_sample" / "sample.wav"
HOOKS = "/v1/integrations/omi"
STREAM_CLOSED = "audio-bytes: stream closed"

# §3.2, the example of the notes, with a second speaker as the docs' variant writes one.
MEMORY: dict[str, Any] = {
    "id": "0b6e3c8a-1f0a-4a7e-9a54-9c1d8d7e7b11",
    "created_at": "2025-01-10T18:22:05.123456+00:00",
    "started_at": "2025-01-10T18:10:01.000000+00:00",
    "finished_at": "2025-01-10T18:20:02.000000+00:00",
    "source": "omi",
    "language": "en",
    "structured": {
        "title": "Project Timeline Discussion",
        "overview": "Discussed launch priorities...",
        "emoji": "📅",
        "category": "work",
        "action_items": [
            {
                "description": "Send proposal by Friday",
                "completed": False,
                "created_at": None,
                "updated_at": None,
                "due_at": None,
                "completed_at": None,
                "conversation_id": None,
            }
        ],
        "events": [],
    },
    "transcript_segments": [
        {
            "id": "6f1c2b7e-2a7d-4d0e-9a0e-4d8e4b1d2c11",
            "text": "Let's discuss the timeline.",
            "speaker": "SPEAKER_0",
            "speaker_id": 0,
            "is_user": True,
            "person_id": None,
            "start": 0.5,
            "end": 2.1,
            "translations": [],
            "speech_profile_processed": True,
            "stt_provider": None,
        },
        {
            "id": "8a2d3c9f-3b8e-4e1f-8b1f-5e9f5c2e3d22",
            "text": "The mobile app launches first, the website in March.",
            "speaker": "SPEAKER_1",
            "speaker_id": 1,
            "speakerId": 1,
            "speaker_name": "Diane",
            "is_user": False,
            "person_id": "p-123",
            "start": 2.6,
            "end": 6.0,
            "translations": [{"lang": "es", "text": "La app móvil sale primero."}],
            "speech_profile_processed": True,
            "stt_provider": None,
        },
    ],
    "transcript_segments_compressed": False,
    "geolocation": None,
    "photos": [],
    "audio_files": [],
    "private_cloud_sync_enabled": False,
    "apps_results": [{"app_id": "summary_assistant", "content": "..."}],
    "suggested_summarization_apps": ["summary_assistant"],
    "plugins_results": [{"plugin_id": "summary_assistant", "content": "..."}],
    "external_data": None,
    "app_id": None,
    "discarded": False,
    "visibility": "private",
    "starred": False,
    "processing_memory_id": None,
    "processing_conversation_id": None,
    "status": "completed",
    "is_locked": False,
    "data_protection_level": None,
    "folder_id": None,
}


def realtime_segment(sid: str, text: str, start: float, end: float, speaker: int = 0, **extra: Any) -> dict[str, Any]:
    """A ``TranscriptSegment`` as the realtime webhook sends it (§1.6, §3.3)."""
    return {
        "id": sid,
        "text": text,
        "speaker": f"SPEAKER_{speaker}",
        "speaker_id": speaker,
        "is_user": speaker == 0,
        "person_id": None,
        "start": start,
        "end": end,
        "translations": [],
        "speech_profile_processed": True,
        "stt_provider": None,
        **extra,
    }


def api_token(server: ServerProcess, uid: str) -> str:
    """An API token for the webhooks, made as the README says: ``omi-letta token create --name omi-webhooks``."""
    made = subprocess.run(
        [sys.executable, "-m", "app", "token", "create", "--uid", uid, "--name", "omi-webhooks"],
        cwd=server.data_dir,
        env={**os.environ, "DATA_DIR": str(server.data_dir), "ADMIN_KEY": ADMIN_KEY},
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip()


def hook_url(server: ServerProcess, name: str, key: str | None, append: str) -> str:
    """The URL the cloud posts to: the user's URL, then the cloud's own ``?…`` appended."""
    url = f"{server.http}{HOOKS}/{name}"
    if key is not None:
        url += f"?key={key}"
    return f"{url}?{append}"


def post_hook(
    server: ServerProcess, name: str, key: str | None, append: str, *, body: Any = None, content: bytes | None = None
) -> httpx.Response:
    url = hook_url(server, name, key, append)
    if content is not None:
        return httpx.post(url, content=content, headers={"Content-Type": "application/octet-stream"}, timeout=60)
    return httpx.post(url, json=body, timeout=60)


def outbox(server: ServerProcess, conversation_id: str) -> list[tuple[str, str, list[str]]]:
    """``(sink, action, turn_ids)`` of a conversation's outbox records, oldest first (read from the store)."""
    with sqlite3.connect(f"file:{server.data_dir / 'omi-letta.db'}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT sink, action, turn_ids FROM outbox WHERE conversation_id = ? ORDER BY id", (conversation_id,)
        ).fetchall()
    return [(sink, action, json.loads(ids)) for sink, action, ids in rows]


def conversations_of(server: ServerProcess, uid: str) -> list[dict[str, Any]]:
    return server.get("/v1/conversations/page", uid=uid, params={"limit": 50}).json()["items"]


@pytest.fixture(scope="module")
def keys(server: ServerProcess) -> dict[str, str]:
    """An API token for each user of these tests."""
    users = ("hook-memory", "hook-realtime", "hook-summary", "hook-bad", "hook-audio", "hook-sample")
    return {uid: api_token(server, uid) for uid in users}


def test_memory_created_is_stored_with_its_summary_and_queued_once(server: ServerProcess, keys: dict[str, str]):
    uid = "hook-memory"
    reply = post_hook(server, "memory-created", keys[uid], f"uid={uid}", body=MEMORY)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {}

    [stored] = conversations_of(server, uid)
    assert stored["status"] == "completed"
    assert stored["started_at"] == "2025-01-10T18:10:01+00:00"
    assert stored["finished_at"] == "2025-01-10T18:20:02+00:00"
    assert stored["structured"]["title"] == "Project Timeline Discussion"
    assert stored["structured"]["overview"] == "Discussed launch priorities..."
    assert stored["structured"]["action_items"][0]["description"] == "Send proposal by Friday"
    me, diane = stored["transcript_segments"]
    assert (me["text"], me["speaker"], me["speaker_id"], me["is_user"], me["speaker_name"]) == (
        "Let's discuss the timeline.", "SPEAKER_0", 0, True, "me",
    )  # fmt: skip
    assert (me["start"], me["end"]) == (0.5, 2.1)
    assert (diane["speaker"], diane["speaker_id"], diane["is_user"], diane["person_id"], diane["speaker_name"]) == (
        "SPEAKER_1", 1, False, "p-123", "Diane",
    )  # fmt: skip
    assert diane["translations"] == [{"lang": "es", "text": "La app móvil sale primero."}]

    queued = outbox(server, stored["id"])
    turns = {s["id"] for s in stored["transcript_segments"]}
    assert sorted((sink, action) for sink, action, _ in queued) == [("index", "closed"), ("index", "turns")]
    assert {i for _, action, ids in queued if action == "turns" for i in ids} == turns

    # The same delivery again changes nothing and queues nothing.
    again = post_hook(server, "memory-created", keys[uid], f"uid={uid}", body=MEMORY)
    assert again.status_code == 200 and again.json() == {}
    assert conversations_of(server, uid) == [stored]
    assert outbox(server, stored["id"]) == queued

    # Changed in the cloud: only what changed is queued again.
    edited = copy.deepcopy(MEMORY)
    edited["structured"]["title"] = "Launch plan"
    edited["transcript_segments"][1]["text"] = "The mobile app launches first."
    assert post_hook(server, "memory-created", keys[uid], f"uid={uid}", body=edited).status_code == 200
    [updated] = conversations_of(server, uid)
    assert updated["id"] == stored["id"] and updated["structured"]["title"] == "Launch plan"
    assert updated["transcript_segments"][1]["text"] == "The mobile app launches first."
    assert outbox(server, stored["id"])[len(queued) :] == [("index", "turns", [diane["id"]])]

    # It reached the memory index (delivered through the outbox).
    deadline = time.monotonic() + 60
    while True:
        hits = server.get("/v1/memory/search", uid=uid, params={"q": "discuss the timeline"}).json()["items"]
        if hits and hits[0]["conversation_id"] == stored["id"]:
            break
        assert time.monotonic() < deadline, f"not indexed: {hits}"
        time.sleep(0.5)
    assert server.metric("outbox_pending_index") >= 0  # the gauge is there


async def test_realtime_transcript_takes_both_shapes_upserts_by_id_and_goes_live(
    server: ServerProcess, keys: dict[str, str]
):
    uid = "hook-realtime"
    key = keys[uid]
    first = realtime_segment("rt-1", "Hello there, this is the realtime webhook.", 0.2, 2.5)
    second = realtime_segment("rt-2", "And this is the second speaker.", 3.0, 5.0, speaker=1)
    del second["speaker_id"]
    second["speakerId"] = 1  # the docs' bare-array variant
    async with listening(server, token(uid)) as page:
        # The cloud's code: {"segments", "session_id"} with ?uid=.
        reply = await asyncio.to_thread(
            post_hook, server, "realtime-transcript", key, f"uid={uid}", body={"segments": [first], "session_id": uid}
        )
        assert reply.status_code == 200 and reply.json() == {}, reply.text
        # The docs: a bare array, with ?session_id=&uid=.
        reply = await asyncio.to_thread(
            post_hook, server, "realtime-transcript", key, f"session_id=abc123&uid={uid}", body=[second]
        )
        assert reply.status_code == 200 and reply.json() == {}, reply.text

        def heard() -> set[str]:
            return {s["text"] for batch in page.of("segments") for s in batch}

        await page.until(lambda: {first["text"], second["text"]} <= heard(), timeout_s=10)

    [current] = conversations_of(server, uid)
    assert current["status"] == "in_progress"
    segments = current["transcript_segments"]
    assert [(s["text"], s["speaker_id"], s["is_user"]) for s in segments] == [
        (first["text"], 0, True),
        (second["text"], 1, False),
    ]
    assert segments[1]["start"] - segments[0]["start"] == pytest.approx(2.8, abs=0.01)
    queued = outbox(server, current["id"])

    # The same segment again changes nothing; grown under the same id, it is updated, not added.
    assert post_hook(server, "realtime-transcript", key, f"uid={uid}", body=[first]).status_code == 200
    assert conversations_of(server, uid)[0]["transcript_segments"] == segments
    assert outbox(server, current["id"]) == queued
    grown = {**first, "text": first["text"] + " It grew.", "end": 3.0}
    assert post_hook(server, "realtime-transcript", key, f"uid={uid}", body={"segments": [grown]}).status_code == 200
    again = conversations_of(server, uid)[0]["transcript_segments"]
    assert [s["id"] for s in again] == [s["id"] for s in segments]
    assert again[0]["text"].endswith("It grew.") and again[0]["start"] == segments[0]["start"]
    assert outbox(server, current["id"])[len(queued) :] == [("index", "turns", [segments[0]["id"]])]

    closed = server.post(f"/v1/conversations/{current['id']}/close", uid=uid).json()
    assert closed["status"] == "completed"
    assert ("index", "closed", []) in outbox(server, current["id"])


def test_memory_created_takes_over_the_conversation_its_realtime_segments_built(
    server: ServerProcess, keys: dict[str, str]
):
    uid = "hook-realtime"
    key = keys[uid]
    memory = copy.deepcopy(MEMORY)
    memory["id"] = "11111111-2222-3333-4444-555555555555"
    raw = [
        realtime_segment(memory["transcript_segments"][0]["id"], "Let's discuss", 0.5, 1.2),
        realtime_segment("absorbed-by-the-cloud", "the timeline.", 1.3, 2.1),
    ]
    assert post_hook(server, "realtime-transcript", key, f"uid={uid}", body=raw).status_code == 200
    [building] = [c for c in conversations_of(server, uid) if c["status"] == "in_progress"]
    assert len(building["transcript_segments"]) == 2
    assert post_hook(server, "memory-created", key, f"uid={uid}", body=memory).status_code == 200
    taken = server.get(f"/v1/conversations/{building['id']}", uid=uid).json()
    assert taken["status"] == "completed" and taken["structured"]["title"] == memory["structured"]["title"]
    assert [s["text"] for s in taken["transcript_segments"]] == [s["text"] for s in memory["transcript_segments"]]
    assert not [c for c in conversations_of(server, uid) if c["status"] == "in_progress"]
    queued = outbox(server, building["id"])
    raw_ids = [s["id"] for s in building["transcript_segments"]]
    assert queued[-2:] == [
        ("index", "turns", [raw_ids[1]] + [s["id"] for s in taken["transcript_segments"]]),
        ("index", "closed", []),
    ], "the raw segment the cloud merged away leaves; the cloud's two are written"
    # Sent again: the same conversation, nothing new.
    assert post_hook(server, "memory-created", key, f"uid={uid}", body=memory).status_code == 200
    assert outbox(server, building["id"]) == queued


def test_day_summary_is_kept_once_and_listed(server: ServerProcess, keys: dict[str, str]):
    uid = "hook-summary"
    key = keys[uid]
    # §3.5 as the code sends it (created_at from datetime.now().isoformat(): no zone).
    plain = {"summary": "A calm day: two meetings and a walk.", "uid": uid, "created_at": "2025-10-28T21:00:00.123456"}
    newer = {
        "summary": "{'headline': 'Busy day'}",
        "uid": uid,
        "created_at": "2025-10-29T21:00:00+00:00",
        "summary_json": {
            "id": "s-1",
            "date": "2025-10-29",
            "headline": "Busy day",
            "overview": "Shipped the release.",
            "day_emoji": "🚀",
            "stats": {"total_conversations": 4, "total_duration_minutes": 95, "action_items_count": 2},
            "highlights": [],
            "action_items": [],
            "unresolved_questions": [],
            "decisions_made": [],
            "knowledge_nuggets": [],
            "locations": [],
        },
    }
    for body in (plain, plain, newer, newer):
        reply = post_hook(server, "day-summary", key, f"uid={uid}", body=body)
        assert reply.status_code == 200 and reply.json() == {}, reply.text
    listed = httpx.get(hook_url(server, "day-summaries", key, f"uid={uid}"), timeout=10).json()
    assert listed["total"] == 2
    latest, earlier = listed["items"]
    assert (latest["summary"], latest["summary_json"]["headline"]) == (newer["summary"], "Busy day")
    assert (earlier["summary"], earlier["summary_json"], earlier["created_at"]) == (
        plain["summary"], None, "2025-10-28T21:00:00.123456+00:00",
    )  # fmt: skip
    # With the bearer token too, and only the caller's.
    assert server.get(f"{HOOKS}/day-summaries", uid=uid).json()["total"] == 2
    assert server.get(f"{HOOKS}/day-summaries", uid="someone-else").json()["total"] == 0


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("memory-created", {**MEMORY, "transcript_segments": [{**MEMORY["transcript_segments"][0], "text": 5}]},
         "$.transcript_segments[0].text"),
        ("memory-created", {k: v for k, v in MEMORY.items() if k != "id"}, "$.id"),
        ("memory-created", {**MEMORY, "structured": {"title": ["no"]}}, "$.structured.title"),
        ("memory-created", {**MEMORY, "started_at": "yesterday"}, "$.started_at"),
        ("memory-created", {**MEMORY, "transcript_segments": [MEMORY["transcript_segments"][0]] * 2},
         "$.transcript_segments[1].id"),
        ("realtime-transcript", {"segments": [{"text": "x", "start": "zero", "end": 1}]}, "$.segments[0].start"),
        ("realtime-transcript", [{"text": "x", "end": 1, "is_user": False}], "$[0].start"),
        ("realtime-transcript", {"session_id": "x"}, "$.segments"),
        ("realtime-transcript", "hello", "$"),
        ("day-summary", {"created_at": "2025-10-28T21:00:00"}, "$.summary"),
        ("day-summary", {"summary": "x", "uid": "someone-else"}, "$.uid"),
    ],
)  # fmt: skip
def test_a_malformed_body_gets_422_naming_the_field_and_stores_nothing(
    server: ServerProcess, keys: dict[str, str], name: str, body: Any, field: str
):
    uid = "hook-bad"
    reply = post_hook(server, name, keys[uid], f"uid={uid}", body=body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["extra"]["field"] == field
    assert field.rsplit(".", 1)[-1].split("[")[0].strip("$") in reply.json()["detail"]
    assert conversations_of(server, uid) == []
    assert server.get(f"{HOOKS}/day-summaries", uid=uid).json()["total"] == 0


def test_a_body_that_is_not_json_or_audio_at_a_bad_rate_gets_422(server: ServerProcess, keys: dict[str, str]):
    uid = "hook-bad"
    reply = httpx.post(hook_url(server, "memory-created", keys[uid], f"uid={uid}"), content=b"{nope", timeout=10)
    assert reply.status_code == 422 and reply.json()["extra"]["field"] == "$"
    audio = post_hook(server, "audio-bytes", keys[uid], f"sample_rate=12345&uid={uid}", content=b"\x00\x00" * 800)
    assert audio.status_code == 422 and audio.json()["extra"]["field"] == "sample_rate", audio.text
    assert conversations_of(server, uid) == []


def test_a_wrong_or_missing_secret_gets_401_and_no_token_reaches_the_log(server: ServerProcess, keys: dict[str, str]):
    uid = "hook-bad"
    others = keys["hook-summary"]
    for key, said in (
        (None, "key=olt_"),
        ("olt_made-up-token-000000000000000", "not valid"),
        (f"{ADMIN_KEY}{uid}", "must be an API token"),
        (others, "does not belong to the uid"),
    ):
        for name in ("memory-created", "realtime-transcript", "day-summary", "audio-bytes", "day-summaries"):
            if name == "day-summaries":
                reply = httpx.get(hook_url(server, name, key, f"uid={uid}"), timeout=10)
            else:
                reply = post_hook(server, name, key, f"sample_rate=16000&uid={uid}", body=MEMORY)
            assert reply.status_code == 401, (key, name, reply.text)
            assert said in reply.json()["detail"], reply.json()
    assert conversations_of(server, uid) == []
    # The normal bearer header works too, for the uid it names.
    ok = httpx.post(
        f"{server.http}{HOOKS}/day-summary?uid={uid}",
        json={"summary": "via the header"},
        headers={"Authorization": f"Bearer {token(uid)}"},
        timeout=10,
    )
    assert ok.status_code == 200
    wrong = httpx.post(
        f"{server.http}{HOOKS}/day-summary?uid=hook-memory",
        json={"summary": "via the header"},
        headers={"Authorization": f"Bearer {token(uid)}"},
        timeout=10,
    )
    assert wrong.status_code == 401
    log = server.log()
    assert HOOKS in log, "the requests are in the access log"
    assert not [k for k in keys.values() if k in log], "a token in the URL never reaches the log"
    assert "made-up-token" not in log and MEMORY["transcript_segments"][0]["text"] not in log


async def stream_audio(server: ServerProcess, uid: str, key: str, audio: np.ndarray, *, chunk_s: float) -> None:
    """POST 16 kHz PCM16 in chunks of ``chunk_s`` seconds of audio, as the cloud does (at 4x real time)."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(chunk_s * 16_000) * 2
    url = hook_url(server, "audio-bytes", key, f"sample_rate=16000&uid={uid}")
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(0, len(pcm), step):
            started = time.monotonic()
            reply = await http.post(
                url, content=pcm[i : i + step], headers={"Content-Type": "application/octet-stream"}
            )
            assert reply.status_code == 200 and reply.json() == {}, reply.text
            await asyncio.sleep(max(0.0, chunk_s / 4 - (time.monotonic() - started)))


async def heard_from_audio(
    server: ServerProcess, uid: str, words: str, *, streams_closed: int, timeout_s: float = 90
) -> dict[str, Any]:
    """The user's conversation once its text holds ``words`` and the audio stream went quiet and ended
    (the server has logged more than ``streams_closed`` ends of streams)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = conversations_of(server, uid)
        text = normalize(" ".join(s["text"] for s in found[0]["transcript_segments"])) if found else ""
        if words in text and server.log().count(STREAM_CLOSED) > streams_closed:
            return found[0]
        assert time.monotonic() < deadline, f"not transcribed: {found}\n{server.log()[-2000:]}"
        await asyncio.sleep(0.5)


def _voice(truth: list[Turn], text: str) -> str:
    """The voice of the turn whose words a segment shares most."""
    words = set(normalize(text).split())
    return max(truth, key=lambda t: len(words & set(normalize(t.text).split()))).speaker


async def test_audio_bytes_become_speaker_attributed_turns(
    server: ServerProcess, keys: dict[str, str], dialogue: tuple[Path, list[Turn]]
):
    uid = "hook-audio"
    path, truth = dialogue
    audio = np.concatenate([load_audio_file(path), np.zeros(16_000 * 2, dtype=np.float32)])
    closed = server.log().count(STREAM_CLOSED)
    await stream_audio(server, uid, keys[uid], audio, chunk_s=3.0)
    conversation = await heard_from_audio(server, uid, "pharmacy", streams_closed=closed)
    segments = conversation["transcript_segments"]
    assert conversation["status"] == "in_progress"
    assert len({s["speaker_id"] for s in segments}) >= 2, segments
    by_voice: dict[str, set[int]] = {}
    for seg in segments:
        by_voice.setdefault(_voice(truth, seg["text"]), set()).add(seg["speaker_id"])
    assert len(by_voice) == 2 and all(len(ids) == 1 for ids in by_voice.values()), by_voice
    assert by_voice["en-us"] != by_voice["en-us+f3"], "each voice is its own speaker"
    for seg in segments:
        assert seg["speaker"] == f"SPEAKER_{seg['speaker_id']}"
        assert seg["speaker_name"] == f"Speaker {seg['speaker_id']}"
    assert outbox(server, conversation["id"]), "the turns are queued for the sinks"
    server.post(f"/v1/conversations/{conversation['id']}/close", uid=uid)
    log = server.log()
    assert not [s for s in segments if s["text"] in log], "transcript text is never logged"


async def test_audio_bytes_of_the_pyannote_sample(server: ServerProcess, keys: dict[str, str]):
    if not SAMPLE.is_file():
        pytest.skip(f"shared audio is absent ({SAMPLE}); it exists only on the project's machines")
    uid = "hook-sample"
    audio = np.concatenate([load_audio_file(SAMPLE), np.zeros(16_000 * 2, dtype=np.float32)])
    closed = server.log().count(STREAM_CLOSED)
    await stream_audio(server, uid, keys[uid], audio, chunk_s=5.0)  # the cloud's default: every 5 s of audio
    conversation = await heard_from_audio(server, uid, "new jersey", streams_closed=closed, timeout_s=120)
    closed = server.post(f"/v1/conversations/{conversation['id']}/close", uid=uid).json()
    segments = closed["transcript_segments"]
    assert "New Jersey" in " ".join(s["text"] for s in segments)
    assert len({s["speaker_id"] for s in segments}) >= 2, segments
    queued = outbox(server, closed["id"])
    assert {action for _, action, _ in queued} == {"turns", "closed"}


def test_the_reply_message_is_configurable(tmp_path: Path):
    server = ServerProcess(tmp_path / "server", env={"OMI_WEBHOOK_REPLY": "Saved to your memory."}).start()
    try:
        key = api_token(server, "hook-reply")
        reply = post_hook(server, "memory-created", key, "uid=hook-reply", body=MEMORY)
        assert reply.status_code == 200 and reply.json() == {"message": "Saved to your memory."}
        realtime = post_hook(server, "realtime-transcript", key, "uid=hook-reply", body=[])
        assert realtime.json() == {}, "no message per realtime batch: the app would push a notification for each"
    finally:
        server.stop()
