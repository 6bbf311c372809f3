"""Offline audio from the device (issue "Offline audio"): ``/v1`` and ``/v2/sync-local-files`` on a real server.

The recordings are real Opus frames written the way the OMI app writes them (tests/offline_files.py)
from espeak-ng speech; they go through the same VAD, speech-to-text, diarization and voice profiles
as live audio, into conversations at the time they were recorded.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile

from app.ops.letta_local import LocalLetta
from tests.integration.test_delivery import (
    LONG_DIALOGUE,
    agent_of,
    as_conversation,
    assert_exactly_once,
    client_of,
    serve,
    wait_drained,
)
from tests.offline_files import app_file, app_name
from tests.support import ServerProcess, normalize, synthesize, token, wer

DAY_AGO = time.time() - 86_400
KEYWORDS = ["report", "yesterday", "lunch", "friday"]  # a word of each of the first four turns


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """The six turns of the long dialogue, each as 16 kHz audio."""
    folder = tmp_path_factory.mktemp("sync-audio")
    out = []
    for i, turn in enumerate(LONG_DIALOGUE):
        wav, _ = synthesize([turn], folder / f"turn{i}.wav")
        audio, rate = soundfile.read(wav, dtype="float32")
        assert rate == 16_000
        out.append(audio)
    return out


def upload(server: ServerProcess, uid: str, *files: tuple[str, bytes], version: int = 2) -> httpx.Response:
    parts = [("files", (name, body, "application/octet-stream")) for name, body in files]
    return httpx.post(
        f"{server.http}/v{version}/sync-local-files",
        files=parts,
        headers={"Authorization": f"Bearer {token(uid)}"},
        timeout=600,
    )


def finished(server: ServerProcess, uid: str, job_id: str, timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = server.get(f"/v2/sync-local-files/{job_id}", uid=uid).json()
        if job["status"] in ("completed", "partial_failure", "failed"):
            return dict(job)
        assert time.monotonic() < deadline, job
        time.sleep(0.3)


def conversations_of(server: ServerProcess, uid: str) -> list[dict[str, Any]]:
    return list(server.get("/v1/conversations/page", uid=uid, params={"limit": 200}).json()["items"])


def said(conversation: dict[str, Any]) -> str:
    return normalize(" ".join(s["text"] for s in conversation["transcript_segments"]))


def queued(server: ServerProcess, uid: str) -> int:
    with sqlite3.connect(f"file:{server.data_dir / 'omi-letta.db'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM outbox WHERE uid = ?", (uid,)).fetchone()[0])


def dialogue(speech: list[np.ndarray], turns: range, pause_s: float = 0.6) -> np.ndarray:
    pause = np.zeros(int(pause_s * 16_000), dtype=np.float32)
    return np.concatenate([part for i in turns for part in (speech[i], pause)])


def test_v1_answers_when_the_recording_is_a_conversation_at_its_own_time(
    server: ServerProcess, speech: list[np.ndarray]
):
    uid = f"sync-v1-{uuid.uuid4().hex[:8]}"
    name, body = app_file(dialogue(speech, range(2)), "opus_fs320", DAY_AGO)
    reply = upload(server, uid, (name, body), version=1)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["updated_memories"] == [] and len(answer["new_memories"]) == 1
    [conversation] = conversations_of(server, uid)
    assert conversation["id"] == answer["new_memories"][0] and conversation["status"] == "completed"
    started = datetime.fromisoformat(conversation["started_at"]).timestamp()
    assert int(DAY_AGO) <= started < int(DAY_AGO) + 2, "the conversation starts when the recording's speech did"
    reference = " ".join(text for _, text in LONG_DIALOGUE[:2])
    assert wer(reference, " ".join(s["text"] for s in conversation["transcript_segments"])) <= 0.3
    assert len({s["speaker_id"] for s in conversation["transcript_segments"]}) == 2, "two voices, two speakers"


def test_v2_is_a_job_that_only_its_user_sees_and_the_same_upload_again_adds_nothing(
    server: ServerProcess, speech: list[np.ndarray]
):
    uid = f"sync-v2-{uuid.uuid4().hex[:8]}"
    file = app_file(dialogue(speech, range(2, 4)), "opus", DAY_AGO + 3600)
    reply = upload(server, uid, file)
    assert reply.status_code == 202, reply.text
    started = reply.json()
    assert set(started) == {"job_id", "status", "total_files", "total_segments", "poll_after_ms"}
    assert (started["status"], started["total_files"], started["poll_after_ms"]) == ("queued", 1, 3000)
    job = finished(server, uid, started["job_id"])
    assert job["status"] == "completed" and job["total_segments"] == job["successful_segments"] == 1
    assert job["result"]["failed_segments"] == 0 and job["result"]["errors"] == []
    [conversation_id] = job["result"]["new_memories"]
    assert "pharmacy" in said(server.get(f"/v1/conversations/{conversation_id}", uid=uid).json())

    assert server.get(f"/v2/sync-local-files/{job['job_id']}", uid="someone-else").status_code == 403
    assert server.get(f"/v2/sync-local-files/{uuid.uuid4()}", uid=uid).status_code == 404

    before = (conversations_of(server, uid), queued(server, uid))
    again = upload(server, uid, file)
    assert again.status_code == 202 and again.json()["job_id"] == started["job_id"]
    assert (again.json()["status"], again.json()["poll_after_ms"]) == ("completed", 0)
    v1 = upload(server, uid, file, version=1)
    assert v1.status_code == 200 and v1.json()["new_memories"] == [conversation_id]
    assert (conversations_of(server, uid), queued(server, uid)) == before, "no segment, turn or record added"


def test_the_same_upload_while_its_job_runs_is_409(server: ServerProcess, speech: list[np.ndarray]):
    uid = f"sync-busy-{uuid.uuid4().hex[:8]}"
    file = app_file(dialogue(speech, range(6)), "opus_fs320", DAY_AGO + 7200)
    first = upload(server, uid, file)
    assert first.status_code == 202
    second = upload(server, uid, file)
    assert second.status_code == 409, second.text
    assert second.headers["retry-after"] == "10" and second.json()["job_id"] == first.json()["job_id"]
    assert finished(server, uid, first.json()["job_id"])["status"] == "completed"


def test_a_bad_file_is_refused_by_name_and_the_others_go_through(server: ServerProcess, speech: list[np.ndarray]):
    uid = f"sync-mixed-{uuid.uuid4().hex[:8]}"
    good = app_file(dialogue(speech, range(4, 6)), "pcm16", DAY_AGO + 10_800)
    name, body = app_file(speech[0], "opus_fs320", DAY_AGO + 20_000)
    truncated = (name, body[:-2])  # the upload broke off inside the last frame
    aac = (app_name("opus", DAY_AGO).replace("_opus_", "_aac_"), b"\x04\x00\x00\x00abcd")
    misnamed = ("recording-monday.bin", body)
    reply = upload(server, uid, good, truncated, aac, misnamed)
    assert reply.status_code == 400, reply.text
    answer = reply.json()
    refused = {e["file"]: e["detail"] for e in answer["errors"]}
    assert set(refused) == {truncated[0], aac[0], misnamed[0]}
    assert "cut short" in refused[truncated[0]] and "codec aac is not supported" in refused[aac[0]]
    assert "not an OMI offline file name" in refused[misnamed[0]]
    assert all(name in answer["detail"] for name in refused)
    job = finished(server, uid, answer["job_id"])
    assert job["total_files"] == 1 and job["status"] == "completed"
    [conversation] = conversations_of(server, uid)
    assert "prescription" in said(conversation) and "tuesday" in said(conversation)


def test_recordings_inside_next_to_and_far_from_a_conversation(server: ServerProcess, speech: list[np.ndarray]):
    uid = f"sync-place-{uuid.uuid4().hex[:8]}"
    base = DAY_AGO - 86_400
    first = upload(server, uid, app_file(dialogue(speech, range(2)), "opus_fs320", base), version=1).json()
    [conversation_id] = first["new_memories"]
    original = server.get(f"/v1/conversations/{conversation_id}", uid=uid).json()

    inside = app_file(speech[2], "opus_fs320", base + 2.0)  # overlaps the conversation's first seconds
    after = app_file(speech[3], "opus_fs320", base + 60)  # a minute after it ended
    before = app_file(speech[4], "opus_fs320", base - 90)  # a minute and a half before it began
    far = app_file(speech[5], "opus_fs320", base + 3 * 3600)
    for file in (inside, after, before):
        answer = upload(server, uid, file, version=1).json()
        assert answer == {
            "new_memories": [],
            "updated_memories": [conversation_id],
            "failed_segments": 0,
            "total_segments": 1,
            "errors": [],
        }, answer
    answer = upload(server, uid, far, version=1).json()
    assert len(answer["new_memories"]) == 1 and answer["updated_memories"] == []

    listed = {c["id"]: c for c in conversations_of(server, uid)}
    assert len(listed) == 2
    extended = listed[conversation_id]
    assert extended["started_at"] < original["started_at"], "re-timed to start with the earlier recording"
    assert extended["finished_at"] > original["finished_at"], "and to end with the later one"
    starts = [s["start"] for s in extended["transcript_segments"]]
    assert starts == sorted(starts) and starts[0] == 0.0
    text = said(extended)
    assert all(word in text for word in ("prescription", "report", "pharmacy", "friday")), text
    assert text.index("prescription") < text.index("report") < text.index("friday")
    assert "tuesday" in said(listed[answer["new_memories"][0]])


def test_kill_mid_job_then_restart_resumes_and_delivers_exactly_once(
    tmp_path: Path, letta: LocalLetta, speech: list[np.ndarray]
):
    """Four turns, each its own piece of speech; the server is killed once the first is stored, then started again."""
    uid = f"sync-kill-{uuid.uuid4().hex[:8]}"
    gap = np.zeros(16_000 * 150, dtype=np.float32)
    audio = np.concatenate([part for i in range(4) for part in (speech[i], gap)])
    recorded_at = time.time() - 7200
    file = app_file(audio, "opus_fs320", recorded_at)
    server = serve(tmp_path, letta)
    try:
        job_id = upload(server, uid, file).json()["job_id"]
        deadline = time.monotonic() + 240
        while server.get(f"/v2/sync-local-files/{job_id}", uid=uid).json()["processed_segments"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        server.stop(kill=True)
        server = ServerProcess(server.data_dir, env=server.env, port=server.port).start()
        job = finished(server, uid, job_id)
        assert (job["status"], job["total_segments"], job["successful_segments"]) == ("completed", 4, 4)
        assert len(job["result"]["new_memories"]) == 4
        listed = sorted(conversations_of(server, uid), key=lambda c: c["started_at"])
        assert sorted(c["id"] for c in listed) == sorted(job["result"]["new_memories"])
        for conversation, keyword in zip(listed, KEYWORDS, strict=True):
            everything = " ".join(said(c) for c in listed)
            assert keyword in said(conversation) and everything.count(keyword) == 1, (keyword, everything)
        wait_drained(server, timeout_s=180)
        client = client_of(letta)
        agent = agent_of(client, uid)
        for listed_one in listed:
            stored = as_conversation(server.get(f"/v1/conversations/{listed_one['id']}", uid=uid).json(), uid)
            mine = assert_exactly_once(client, agent, stored)
            first = min(mine, key=lambda p: p.created_at)
            spoken = stored.started_at + stored.segments[0].start
            assert abs(first.created_at.timestamp() - spoken) < 1, "each passage is dated when it was said"
        deadline = time.monotonic() + 60
        while list((server.data_dir / "sync").glob("*/*.bin")):
            assert time.monotonic() < deadline, "the audio is deleted once its conversations are delivered"
            time.sleep(0.5)
    finally:
        server.stop()
