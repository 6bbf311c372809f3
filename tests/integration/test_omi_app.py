"""The OMI app against this server, screen by screen: every answer decoded the way the app decodes it.

``tests/omi_app_schema.py`` reads JSON as the app's Dart ``fromJson`` does and raises where the app
would throw. A real server, real espeak-ng speech through the real ``/v4/listen`` (the
chat screen is decoded without an agent and with the real local Letta server and the stand-in model).
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
import websockets

from app.cli.simulator import simulate
from app.ops.letta_local import LocalLetta
from memory.letta.blocks import FACTS_BLOCK
from tests.integration.test_delivery import SAMPLE, agent_of, client_of, serve, wait_drained
from tests.llm_standin import ScriptedLlm
from tests.offline_files import app_file
from tests.omi_app_schema import (
    decode_conversation,
    decode_conversation_list,
    decode_create_conversation,
    decode_memory,
    decode_message,
    decode_person,
    decode_search,
    decode_speech_profile,
    decode_stream,
    decode_sync_job_start,
    decode_sync_job_status,
    decode_sync_v1,
)
from tests.support import ServerProcess, Turn, speak, token

LLM_KEY = "sk-standin-0002"


def _uid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _wav(audio: np.ndarray) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, audio, 16_000, format="WAV", subtype="PCM_16")
    return out.getvalue()


@pytest.fixture(scope="module")
def wearer_voice(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About seven seconds of one espeak voice, for the speech profile."""
    text = (
        "Hello, this is my voice for the speech profile. I read a few sentences so that the "
        "service learns how I sound when I talk about my day."
    )
    return speak(text, "en-us", tmp_path_factory.mktemp("voice") / "voice.wav")


def test_start_up_settings_the_app_reads_first(server: ServerProcess) -> None:
    uid = _uid("startup")
    onboarding = server.get("/v1/users/onboarding", uid=uid)
    assert onboarding.status_code == 200 and onboarding.json()["completed"] is False, onboarding.text
    language = server.get("/v1/users/language", uid=uid).json()
    assert language == {"language": None}  # null makes the app ask for one
    assert server.patch("/v1/users/language", uid=uid, json={"language": "de"}).status_code == 200
    assert server.get("/v1/users/language", uid=uid).json() == {"language": "de"}
    assert server.patch("/v1/users/onboarding", uid=uid, json={"completed": True}).status_code == 200
    assert server.get("/v1/users/onboarding", uid=uid).json()["completed"] is True
    fcm = server.post("/v1/users/fcm-token", uid=uid, json={"fcm_token": "x" * 40, "time_zone": "Europe/Berlin"})
    assert fcm.status_code == 200, fcm.text
    # Screens this server does not serve answer 404, which the app tolerates (a 401 would log it out).
    for path in ("/v1/folders", "/v2/apps", "/v1/goals", "/v1/users/profile"):
        assert server.get(path, uid=uid).status_code == 404, path


def test_speech_profile_screen(server: ServerProcess, wearer_voice: np.ndarray) -> None:
    uid = _uid("profile")
    assert decode_speech_profile(server.get("/v3/speech-profile", uid=uid).json()) is False
    assert server.get("/v4/speech-profile", uid=uid).json() == {"url": None}
    short = server.post("/v3/upload-audio", uid=uid, files={"file": ("p.wav", _wav(wearer_voice[:32_000]))})
    assert short.status_code == 400 and "5 to 120 s" in short.text, short.text
    other_rate = io.BytesIO()
    soundfile.write(other_rate, wearer_voice[::2], 8_000, format="WAV")
    refused = server.post("/v3/upload-audio", uid=uid, files={"file": ("p.wav", other_rate.getvalue())})
    assert refused.status_code == 400, refused.text
    stored = server.post("/v3/upload-audio", uid=uid, files={"file": ("p.wav", _wav(wearer_voice))})
    assert stored.status_code == 200, stored.text
    assert decode_speech_profile(server.get("/v3/speech-profile", uid=uid).json()) is True
    assert all(p["name"] != "me" for p in server.get("/v1/users/people", uid=uid).json())  # the wearer is no person


def test_people_screen(server: ServerProcess) -> None:
    uid = _uid("people")
    added = server.post("/v1/users/people", uid=uid, json={"name": "Sheila"})
    assert added.status_code == 200, added.text
    person = decode_person(added.json())
    again = decode_person(server.post("/v1/users/people", uid=uid, json={"name": "sheila"}).json())
    assert again["id"] == person["id"], "adding a name twice finds the person"
    assert server.post("/v1/users/people", uid=uid, json={"name": "x"}).status_code == 400
    listed = server.get("/v1/users/people", uid=uid).json()
    assert [decode_person(p)["name"] for p in listed] == ["Sheila"]
    renamed = server.patch(f"/v1/users/people/{person['id']}/name", uid=uid, params={"value": "Sheila T"})
    assert renamed.status_code == 200, renamed.text
    assert decode_person(server.get(f"/v1/users/people/{person['id']}", uid=uid).json())["name"] == "Sheila T"
    assert server.delete(f"/v1/users/people/{person['id']}", uid=uid).status_code == 204
    assert server.get(f"/v1/users/people/{person['id']}", uid=uid).status_code == 404
    assert server.get("/v1/users/people", uid=uid).json() == []


def test_memories_screen(server: ServerProcess) -> None:
    uid = _uid("memories")
    assert server.get("/v3/memories", uid=uid).json() == []
    added = server.post(
        "/v3/memories", uid=uid, json={"content": "Works night shifts at the clinic.", "visibility": "private"}
    )
    assert added.status_code == 200, added.text
    fact = decode_memory(added.json())
    again = server.post("/v3/memories", uid=uid, json={"content": "works night shifts at the clinic."}).json()
    assert decode_memory(again)["id"] == fact["id"], "the same words are not kept twice"
    assert server.post("/v3/memories", uid=uid, json={"content": " "}).status_code == 400
    edited = server.patch(f"/v3/memories/{fact['id']}", uid=uid, params={"value": "Works day shifts at the clinic."})
    assert edited.status_code == 200 and edited.json() == {"status": "ok"}, edited.text
    [listed] = [decode_memory(m) for m in server.get("/v3/memories", uid=uid).json()]
    assert listed["content"] == "Works day shifts at the clinic."
    assert server.get("/v3/memories", uid=uid).json()[0]["edited"] is True
    assert server.patch("/v3/memories/nope", uid=uid, params={"value": "x y"}).status_code == 404
    assert server.delete(f"/v3/memories/{fact['id']}", uid=uid).status_code == 200
    assert server.delete(f"/v3/memories/{fact['id']}", uid=uid).status_code == 404
    assert server.get("/v3/memories", uid=uid).json() == []


def test_chat_screen_without_an_agent_still_decodes(server: ServerProcess) -> None:
    uid = _uid("chat")
    listed = server.get("/v2/messages", uid=uid)
    assert listed.status_code == 200, listed.text
    messages = [decode_message(m) for m in listed.json()]
    assert messages and messages[0]["sender"] == "ai"  # the greeting
    asked = server.post("/v2/messages", uid=uid, json={"text": "What did I do yesterday?", "file_ids": []})
    assert asked.status_code == 200 and asked.headers["content-type"].startswith("text/event-stream")
    events = decode_stream(asked.content)
    assert events[-1][0] == "done" and "Letta" in "".join(v for k, v in events if k == "data"), events
    cleared = server.delete("/v2/messages", uid=uid)
    assert cleared.status_code == 200 and decode_message(cleared.json())["sender"] == "ai"


async def test_a_day_with_the_app(server: ServerProcess, dialogue: tuple[Path, list[Turn]]) -> None:
    """Home screen while listening, finish, the list, search, edits and delete: each answer decoded."""
    path, _ = dialogue
    uid = _uid("day")
    result = await simulate(path, server.ws, token=token(uid), speed=4, settle_s=2)
    assert result.segments
    # The app's start-up asks for the conversation in progress, then the list.
    in_progress = decode_conversation_list(
        server.get("/v1/conversations", uid=uid, params={"statuses": "in_progress", "limit": 1}).json()
    )
    assert [c["status"] for c in in_progress] == ["in_progress"]
    assert decode_conversation_list(server.get("/v1/conversations", uid=uid).json()) == []  # not yet finished
    finished = server.post("/v1/conversations", uid=uid)
    assert finished.status_code == 200, finished.text
    conversation = decode_create_conversation(finished.json())
    assert conversation is not None and conversation["status"] == "completed"
    cid = conversation["id"]
    assert server.post("/v1/conversations", uid=uid).status_code == 404  # nothing in progress now
    [listed] = decode_conversation_list(server.get("/v1/conversations", uid=uid).json())
    assert listed["id"] == cid and listed["segments"]  # finishing transcribes what was left; search finds its end

    found = server.post("/v1/conversations/search", uid=uid, json={"query": "pharmacy", "page": 1, "per_page": 10})
    assert found.status_code == 200, found.text
    page = decode_search(found.json())
    assert [c["id"] for c in page["items"]] == [cid] and page["current_page"] == 1, page
    everything = decode_search(server.post("/v1/conversations/search", uid=uid, json={"query": " "}).json())
    assert [c["id"] for c in everything["items"]] == [cid] and everything["total_pages"] == 1

    assert server.patch(f"/v1/conversations/{cid}/title", uid=uid, params={"title": "Clinic report"}).status_code == 200
    assert server.patch(f"/v1/conversations/{cid}/starred", uid=uid, params={"starred": "true"}).status_code == 200
    [starred] = decode_conversation_list(server.get("/v1/conversations", uid=uid, params={"starred": "true"}).json())
    assert starred["structured"]["title"] == "Clinic report" and starred["starred"] is True
    first = starred["segments"][0]
    edited = server.patch(
        f"/v1/conversations/{cid}/segments/text", uid=uid, json={"segment_id": first["id"], "text": "Good morning."}
    )
    assert edited.status_code == 200, edited.text
    assigned = server.patch(
        f"/v1/conversations/{cid}/segments/assign-bulk",
        uid=uid,
        json={"segment_ids": [first["id"]], "assign_type": "is_user", "value": "true"},
    )
    assert assigned.status_code == 200, assigned.text
    after = decode_conversation(server.get(f"/v1/conversations/{cid}", uid=uid).json())
    segment = next(s for s in after["segments"] if s["id"] == first["id"])
    assert segment["text"] == "Good morning." and segment["is_user"] is True
    reprocessed = server.post(f"/v1/conversations/{cid}/reprocess", uid=uid)
    assert reprocessed.status_code == 200 and decode_conversation(reprocessed.json())["id"] == cid
    assert server.delete(f"/v1/conversations/{cid}", uid=uid).status_code in (200, 204)
    assert decode_conversation_list(server.get("/v1/conversations", uid=uid).json()) == []


async def test_offline_sync_answers_decode(server: ServerProcess, tmp_path: Path) -> None:
    uid = _uid("sync")
    audio = speak("I walked to the bakery and bought bread for the weekend.", "en-us", tmp_path / "a.wav")
    name, body = app_file(audio, "opus_fs320", 1_700_000_000)
    later, later_body = app_file(audio, "opus_fs320", 1_700_090_000)  # another recording, a day later

    async with httpx.AsyncClient(base_url=server.http, timeout=600) as http:
        auth = {"Authorization": f"Bearer {token(uid)}"}
        v1 = await http.post("/v1/sync-local-files", files=[("files", (name, body))], headers=auth)
        assert v1.status_code == 200, v1.text
        assert decode_sync_v1(v1.json())["new_memories"]
        start = await http.post("/v2/sync-local-files", files=[("files", (later, later_body))], headers=auth)
        assert start.status_code == 202, start.text
        job = decode_sync_job_start(start.json())
        for _ in range(600):
            polled = await http.get(f"/v2/sync-local-files/{job['job_id']}", headers=auth)
            status = decode_sync_job_status(polled.json())
            if status["status"] in ("completed", "partial_failure", "failed"):
                break
            await asyncio.sleep(0.3)
        assert status["status"] == "completed", status


async def _events_until(ws: websockets.ClientConnection, kind: str, within_s: float = 20) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(within_s):
        async for message in ws:
            if isinstance(message, str) and message.startswith("{"):
                event = json.loads(message)
                seen.append(event)
                if event.get("type") == kind:
                    return seen
    raise AssertionError(f"the stream closed before {kind}: {seen}")


async def test_onboarding_questions_can_be_skipped_to_the_end(server: ServerProcess) -> None:
    uid = _uid("onboard-skip")
    url = f"{server.ws}?language=en&sample_rate=16000&codec=pcm16&onboarding=enabled"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token(uid)}"}) as ws:
        first = (await _events_until(ws, "onboarding_question"))[-1]
        assert first["question_index"] == 0 and first["total_questions"] >= 2 and first["question"]
        for index in range(first["total_questions"]):
            await ws.send(json.dumps({"type": "skip_question"}))
            answered = (await _events_until(ws, "question_answered"))[-1]
            assert answered == {"type": "question_answered", "question_index": index, "answered": False}
        complete = (await _events_until(ws, "onboarding_complete"))[-1]
        assert complete["error"] is None and "conversation_id" in complete
    assert server.get("/v1/users/onboarding", uid=uid).json()["completed"] is True


async def test_onboarding_by_voice_answers_and_learns_the_wearers_voice(server: ServerProcess, tmp_path: Path) -> None:
    """Spoken answers move the questions on; every segment is the wearer's, and the voice becomes the profile."""
    uid = _uid("onboard-voice")
    pause = np.zeros(16_000, dtype=np.float32)
    answers = [
        "My name is Sam and I work as a nurse at the clinic.",
        "I mostly talk with my colleagues and my sister.",
        "I would like to remember what the doctors told me.",
    ]
    audio = np.concatenate([part for text in answers for part in (speak(text, "en-us", tmp_path / "a.wav"), pause)])
    path = tmp_path / "onboarding.wav"
    soundfile.write(path, audio, 16_000)
    onboarding = {"onboarding": "enabled"}
    result = await simulate(path, server.ws, token=token(uid), speed=2, settle_s=3, extra_params=onboarding)
    kinds = [e["type"] for e in result.events]
    assert kinds.count("onboarding_question") >= 2 and "question_answered" in kinds, kinds
    assert all(e["answered"] for e in result.events if e["type"] == "question_answered")
    assert result.segments and all(s["is_user"] for s in result.ordered()), result.ordered()
    assert decode_speech_profile(server.get("/v3/speech-profile", uid=uid).json()) is True


async def test_start_up_and_a_day_with_the_agent(tmp_path: Path, letta: LocalLetta) -> None:
    """The app's start-up sequence, then a day: stream, finish, rename, assign a speaker, chat, delete.

    The chat is the real Letta agent with the tests' stand-in model; every answer is decoded as the app does.
    """
    if not SAMPLE.is_file():
        pytest.skip(f"shared audio is absent ({SAMPLE}); it exists only on the project's machines")
    with ScriptedLlm(api_key=LLM_KEY) as llm:
        server = serve(tmp_path, letta, LLM_BASE_URL=llm.base_url, LLM_MODEL=llm.model, LLM_API_KEY=LLM_KEY)
        uid = _uid("app-day")
        try:
            # Start-up: language, onboarding, speech profile, the conversation in progress, the list.
            assert server.get("/v1/users/language", uid=uid).json() == {"language": None}
            assert server.patch("/v1/users/language", uid=uid, json={"language": "en"}).status_code == 200
            assert server.get("/v1/users/onboarding", uid=uid).json()["completed"] is False
            assert decode_speech_profile(server.get("/v3/speech-profile", uid=uid).json()) is False
            assert server.get("/v1/users/people", uid=uid).json() == []
            assert [decode_message(m) for m in server.get("/v2/messages", uid=uid).json()]
            listed = server.get("/v1/conversations", uid=uid, params={"statuses": "in_progress", "limit": 1})
            assert decode_conversation_list(listed.json()) == []
            assert decode_conversation_list(server.get("/v1/conversations", uid=uid).json()) == []

            # A day: the call between Diane and Sheila, finished from the app, renamed, a speaker named.
            await simulate(SAMPLE, server.ws, token=token(uid), speed=2, settle_s=4)
            finished = decode_create_conversation(server.post("/v1/conversations", uid=uid).json())
            assert finished is not None and finished["status"] == "completed"
            cid = finished["id"]
            renamed = server.patch(f"/v1/conversations/{cid}/title", uid=uid, params={"title": "Call with Sheila"})
            assert renamed.status_code == 200
            sheila = decode_person(server.post("/v1/users/people", uid=uid, json={"name": "Sheila"}).json())
            segments = finished["segments"]
            theirs = [s["id"] for s in segments if s["speaker_id"] == segments[-1]["speaker_id"]]
            assigned = server.patch(
                f"/v1/conversations/{cid}/segments/assign-bulk",
                uid=uid,
                json={"segment_ids": theirs, "assign_type": "person_id", "value": sheila["id"]},
            )
            assert assigned.status_code == 200, assigned.text
            [home] = decode_conversation_list(server.get("/v1/conversations", uid=uid).json())
            assert home["structured"]["title"] == "Call with Sheila"
            assert {s["person_id"] for s in home["segments"] if s["id"] in theirs} == {sheila["id"]}
            wait_drained(server)

            async with httpx.AsyncClient(base_url=server.http, timeout=300) as http:
                auth = {"Authorization": f"Bearer {token(uid)}"}
                async with http.stream(
                    "POST", "/v2/messages", json={"text": "Where is Diane from?", "file_ids": []}, headers=auth
                ) as asked:
                    assert asked.status_code == 200
                    reads = [chunk async for chunk in asked.aiter_raw()]
                events = decode_stream(b"".join(reads), reads=reads)  # split as the app splits each read
                answer = "".join(v for k, v in events if k == "data")
                kind, final = events[-1]
                assert kind == "done" and final["sender"] == "ai" and "New Jersey" in answer, events
                chat = [decode_message(m) for m in (await http.get("/v2/messages", headers=auth)).json()]
                assert [m["sender"] for m in chat[:2]] == ["ai", "human"], chat  # newest first, as the app shows
                assert chat[1]["text"] == "Where is Diane from?" and "New Jersey" in chat[0]["text"]
                assert (await http.delete("/v2/messages", headers=auth)).status_code == 200
                after = [decode_message(m) for m in (await http.get("/v2/messages", headers=auth)).json()]
                assert all("New Jersey" not in m["text"] for m in after), after

            # Memories: what the user writes, edits and deletes in the app is what the agent's block says.
            fact = decode_memory(server.post("/v3/memories", uid=uid, json={"content": "Lives in Berlin."}).json())
            other = decode_memory(server.post("/v3/memories", uid=uid, json={"content": "Has a cat."}).json())
            server.patch(f"/v3/memories/{fact['id']}", uid=uid, params={"value": "Lives in Hamburg."})
            server.delete(f"/v3/memories/{other['id']}", uid=uid)
            wait_drained(server)
            block = client_of(letta).agents.blocks.retrieve(FACTS_BLOCK, agent_id=agent_of(client_of(letta), uid))
            assert "Lives in Hamburg." in block.value and "Berlin" not in block.value, block.value
            assert "cat" not in block.value, block.value

            assert server.delete(f"/v1/conversations/{cid}", uid=uid).status_code in (200, 204)
            assert decode_conversation_list(server.get("/v1/conversations", uid=uid).json()) == []
        finally:
            server.stop()
