"""Speakers on the live WebSocket: voice-profile matches, refinement at close, ``speaker_assigned``.

Everything runs on the real server with real synthesized voices streamed as OMI device Opus.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile
import websockets

from app.cli.simulator import encode_frames, simulate, with_query
from ingest.decode import load_audio_file
from tests.support import ServerProcess, Turn, have_espeak, speak, token

ENROLL_TEXT = "I usually walk to the office along the river, and on rainy days I take the early bus instead."


@pytest.fixture(scope="module")
def enrollments(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A recording of each dialogue voice saying something the dialogue does not."""
    if not have_espeak():
        pytest.fail("espeak-ng is not installed; `make test` installs it (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("enrollments")
    out = {}
    for voice in ("en-us", "en-us+f3"):
        path = folder / f"{voice}.wav"
        soundfile.write(path, speak(ENROLL_TEXT, voice, path) * 0.8, 16_000)
        out[voice] = path
    return out


def enroll(server: ServerProcess, uid: str, path: Path, **form: str) -> dict[str, Any]:
    response = httpx.post(
        f"{server.http}/v1/speakers/enroll",
        headers={"Authorization": f"Bearer {token(uid)}"},
        files={"file": (path.name, path.read_bytes())},
        data=form,
        timeout=60,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def voice_at(truth: list[Turn], start: float, first_start: float) -> str:
    """The voice speaking at a segment's start (segment times count from the first speech)."""
    t = truth[0].start + start - first_start
    return min(truth, key=lambda turn: 0 if turn.start - 0.3 <= t <= turn.end else abs(turn.start - t)).speaker


async def test_enrolled_voices_are_named_live_and_after_close(
    server: ServerProcess, dialogue: tuple[Path, list[Turn]], enrollments: dict[str, Path]
) -> None:
    uid = "named"
    me = enroll(server, uid, enrollments["en-us"], me="true")
    sheila = enroll(server, uid, enrollments["en-us+f3"], name="Sheila")
    path, truth = dialogue
    result = await simulate(
        path, server.ws, token=token(uid), speed=4, settle_s=4.5, extra_params={"conversation_timeout": 2}
    )
    suggestions = [e for e in result.events if e["type"] == "speaker_label_suggestion"]
    assert {(e["person_id"], e["person_name"]) for e in suggestions} == {("user", "me"), (sheila["id"], "Sheila")}
    created = next(e for e in result.events if e["type"] == "memory_created")
    segments = created["memory"]["transcript_segments"]
    first = segments[0]["start"]
    for seg in segments:
        if voice_at(truth, seg["start"], first) == "en-us":
            assert (seg["is_user"], seg["speaker_name"], seg["person_id"]) == (True, "me", None), seg
        else:
            assert (seg["is_user"], seg["speaker_name"], seg["person_id"]) == (False, "Sheila", sheila["id"]), seg
    # What the client holds (upserted by id) agrees with what was stored.
    assert [(s["id"], s["speaker_name"]) for s in result.ordered()] == [(s["id"], s["speaker_name"]) for s in segments]
    assert me["is_user"] is True


async def _stream_and_assign(server: ServerProcess, uid: str, path: Path, name: str) -> dict[str, dict[str, Any]]:
    """Stream ``path``, then name the second voice's speaker with ``speaker_assigned``; return the segments."""
    packets, _ = encode_frames(load_audio_file(path), "pcm16")
    url = with_query(server.ws, codec="pcm16", sample_rate=16_000, language="en")
    segments: dict[str, dict[str, Any]] = {}
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token(uid)}"}) as ws:

        async def collect(until: float) -> None:
            while time.monotonic() < until:
                try:
                    message = await asyncio.wait_for(ws.recv(), timeout=max(0.05, until - time.monotonic()))
                except TimeoutError:
                    return
                if message == "ping":
                    await ws.send(b"\x8a\x00")  # the app's keepalive answer
                    continue
                payload = json.loads(message)
                if isinstance(payload, list):
                    segments.update({s["id"]: s for s in payload})

        for packet in packets + [b"\x00\x00" * 1600] * 20:  # then 2 s of silence ends the last utterance
            await ws.send(packet)
        await collect(time.monotonic() + 8)
        ordered = sorted(segments.values(), key=lambda s: s["start"])
        second_voice = ordered[1]  # the dialogue's second turn is the other voice
        await ws.send(
            json.dumps(
                {
                    "type": "speaker_assigned",
                    "speaker_id": second_voice["speaker_id"],
                    "person_id": "client-person-7",
                    "person_name": name,
                    "segment_ids": [second_voice["id"]],
                }
            )
        )
        await collect(time.monotonic() + 3)
    return segments


async def test_speaker_assigned_names_the_speaker_and_teaches_a_profile(
    server: ServerProcess, dialogue: tuple[Path, list[Turn]]
) -> None:
    uid = "assigner"
    path, _ = dialogue
    segments = await _stream_and_assign(server, uid, path, "Dana")
    ordered = sorted(segments.values(), key=lambda s: s["start"])
    dana = [s for s in ordered if s["speaker_id"] == ordered[1]["speaker_id"]]
    assert dana and all(s["speaker_name"] == "Dana" and s["person_id"] == "client-person-7" for s in dana)
    assert all(s["speaker_name"] != "Dana" for s in ordered if s["speaker_id"] != ordered[1]["speaker_id"])
    stored = server.get("/v1/conversations/page", uid=uid).json()["items"][0]["transcript_segments"]
    assert {s["id"]: s["speaker_name"] for s in stored} == {s["id"]: s["speaker_name"] for s in ordered}

    # The voice went into a new profile named Dana, which recognises her in the next conversation.
    profiles = server.get("/v1/speakers", uid=uid).json()["items"]
    assert [p["name"] for p in profiles] == ["Dana"]
    conversation_id = server.get("/v1/conversations/page", uid=uid).json()["items"][0]["id"]
    assert server.post(f"/v1/conversations/{conversation_id}/close", uid=uid).status_code == 200
    again = await simulate(path, server.ws, token=token(uid), speed=4, settle_s=1.5)
    assert {e["person_name"] for e in again.events if e["type"] == "speaker_label_suggestion"} == {"Dana"}


async def test_speaker_assigned_for_a_foreign_segment_is_ignored(
    server: ServerProcess, dialogue: tuple[Path, list[Turn]]
) -> None:
    url = with_query(server.ws, codec="pcm16", sample_rate=16_000, language="en")
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token('stranger')}"}) as ws:
        frame = {"type": "speaker_assigned", "speaker_id": 0, "person_id": "user", "segment_ids": ["nope"]}
        await ws.send(json.dumps(frame))
        await ws.send("not json at all")
        await asyncio.sleep(0.5)
    assert server.get("/v1/speakers", uid="stranger").json()["items"] == []
    assert server.metric("speaker_assignments_rejected_total") >= 1


async def test_relabel_a_speaker_over_http(server: ServerProcess, dialogue: tuple[Path, list[Turn]]) -> None:
    uid = "relabeller"
    path, _ = dialogue
    await simulate(path, server.ws, token=token(uid), speed=4, settle_s=1.5)
    conversation = server.get("/v1/conversations/page", uid=uid).json()["items"][0]
    speaker = conversation["transcript_segments"][0]["speaker_id"]
    url = f"/v1/conversations/{conversation['id']}/speakers"
    response = server.patch(url, uid=uid, json={"speaker_id": speaker, "name": "Diane"})
    assert response.status_code == 200, response.text
    for seg in response.json()["transcript_segments"]:
        assert (seg["speaker_name"] == "Diane") == (seg["speaker_id"] == speaker)
    assert (
        server.patch(url, uid=uid, json={"speaker_id": speaker, "is_user": True}).json()["transcript_segments"][0][
            "speaker_name"
        ]
        == "me"
    )
    assert server.patch(url, uid=uid, json={"speaker_id": 99, "name": "X"}).status_code == 404
    assert server.patch(url, uid=uid, json={"speaker_id": speaker}).status_code == 400
    assert server.patch(url, uid="someone-else", json={"speaker_id": speaker, "name": "X"}).status_code == 404
