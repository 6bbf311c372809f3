"""Conversations: closed by silence, found intact after a crash, and the HTTP API over them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from app.cli.simulator import simulate
from tests.support import ServerProcess, Turn, token, wer


def _only_conversation(server: ServerProcess, uid: str) -> dict:
    body = server.get("/v1/conversations/page", uid=uid).json()
    assert body["total"] == 1, body
    return body["items"][0]


async def _wait_for(predicate, timeout_s: float = 20.0, every_s: float = 0.25):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(every_s)
    raise AssertionError("condition not met in time")


async def test_silence_closes_the_conversation_and_the_client_is_told(
    server: ServerProcess, dialogue: tuple[Path, list[Turn]]
):
    path, truth = dialogue
    result = await simulate(
        path,
        server.ws,
        token=token("timeout"),
        speed=4,
        settle_s=4.5,  # stay connected past conversation_timeout=2 (answering pings)
        extra_params={"conversation_timeout": 2},
    )
    kinds = [e["type"] for e in result.events]
    assert "memory_processing_started" in kinds and "memory_created" in kinds, kinds
    assert kinds.index("memory_processing_started") < kinds.index("memory_created")
    created = next(e for e in result.events if e["type"] == "memory_created")
    memory = created["memory"]
    assert memory["status"] == "completed"
    assert created["messages"] == []
    assert [s["id"] for s in memory["transcript_segments"]] == [s["id"] for s in result.ordered()]
    assert wer(" ".join(t.text for t in truth), " ".join(s["text"] for s in memory["transcript_segments"])) <= 0.25
    stored = server.get(f"/v1/conversations/{memory['id']}", uid="timeout").json()
    assert stored["status"] == "completed"
    assert stored["transcript_segments"] == memory["transcript_segments"]


async def test_a_reconnect_within_the_timeout_resumes_the_conversation(
    server: ServerProcess, dialogue: tuple[Path, list[Turn]]
):
    path, _ = dialogue
    first = await simulate(path, server.ws, token=token("resume"), speed=4, settle_s=1.0)
    second = await simulate(path, server.ws, token=token("resume"), speed=4, settle_s=1.0)
    conversation = _only_conversation(server, "resume")
    assert conversation["status"] == "in_progress"
    stored_ids = {s["id"] for s in conversation["transcript_segments"]}
    assert set(first.segments) | set(second.segments) >= stored_ids
    # Times are relative to the conversation's start, so the second stream's new segments come later
    # (its first words may merge into the first stream's last segment, which is re-sent by id).
    new = [s for s in second.ordered() if s["id"] not in first.segments]
    assert new and min(s["start"] for s in new) > max(s["end"] for s in first.ordered())
    closed = server.post(f"/v1/conversations/{conversation['id']}/close", uid="resume")
    assert closed.status_code == 200
    assert closed.json()["status"] == "completed"


async def test_finalized_segments_survive_a_crash_and_close_after_restart(
    tmp_path: Path, dialogue: tuple[Path, list[Turn]]
):
    from tests.conftest import FAST

    path, _ = dialogue
    first = ServerProcess(tmp_path / "state", env=FAST).start()
    try:
        # uid "keep" asks for 120 s, uid "lapse" for 2 s: after the crash one resumes, one closes.
        # The clients wait for the last segment (a loaded machine transcribes it late), so that
        # what they saw is what was stored.
        keep = await simulate(path, first.ws, token=token("keep"), speed=4, settle_s=5.0)
        lapse = await simulate(
            path, first.ws, token=token("lapse"), speed=4, settle_s=5.0, extra_params={"conversation_timeout": 2}
        )
        assert keep.segments and lapse.segments
        before = _only_conversation(first, "keep")
    finally:
        first.stop(kill=True)  # SIGKILL: no shutdown hooks run
    await asyncio.sleep(2.5)
    second = ServerProcess(tmp_path / "state", env=FAST).start()
    try:
        after = _only_conversation(second, "keep")
        assert after["id"] == before["id"]
        assert after["status"] == "in_progress"
        assert after["transcript_segments"] == before["transcript_segments"]
        assert {s["id"] for s in after["transcript_segments"]} <= set(keep.segments)
        # The 2 s conversation timed out while the server was down; startup closed it.
        lapsed = _only_conversation(second, "lapse")
        assert lapsed["status"] == "completed"
        assert [s["text"] for s in lapsed["transcript_segments"]] == [s["text"] for s in lapse.ordered()]
        # Reconnecting within 120 s resumes the same conversation.
        more = await simulate(path, second.ws, token=token("keep"), speed=4, settle_s=1.0)
        resumed = _only_conversation(second, "keep")
        assert resumed["id"] == before["id"]
        assert len(resumed["transcript_segments"]) > len(before["transcript_segments"])
        assert set(more.segments) <= {s["id"] for s in resumed["transcript_segments"]}
    finally:
        second.stop()


async def test_http_api_is_scoped_to_the_caller(server: ServerProcess, dialogue: tuple[Path, list[Turn]]):
    path, _ = dialogue
    await simulate(path, server.ws, token=token("owner"), speed=4, settle_s=1.0)
    conversation = _only_conversation(server, "owner")
    cid = conversation["id"]
    assert server.get(f"/v1/conversations/{cid}", uid="stranger").status_code == 404
    assert server.get("/v1/conversations/page", uid="stranger").json()["total"] == 0
    assert server.delete(f"/v1/conversations/{cid}", uid="stranger").status_code == 404
    assert server.post(f"/v1/conversations/{cid}/close", uid="stranger").status_code == 404
    one = server.get(f"/v1/conversations/{cid}", uid="owner").json()
    assert one["transcript_segments"] and one["id"] == cid
    assert server.delete(f"/v1/conversations/{cid}", uid="owner").status_code == 204
    assert server.get(f"/v1/conversations/{cid}", uid="owner").status_code == 404


async def test_conversations_list_newest_first_in_pages(server: ServerProcess, dialogue: tuple[Path, list[Turn]]):
    path, _ = dialogue
    ids = []
    for _ in range(3):
        await simulate(path, server.ws, token=token("pages"), speed=4, settle_s=1.0)
        current = server.get("/v1/conversations/page", uid="pages").json()["items"][0]
        closed = server.post(f"/v1/conversations/{current['id']}/close", uid="pages").json()
        ids.append(closed["id"])
    page1 = server.get("/v1/conversations/page", uid="pages", params={"limit": 2}).json()
    page2 = server.get("/v1/conversations/page", uid="pages", params={"limit": 2, "offset": 2}).json()
    assert page1["total"] == 3
    assert [c["id"] for c in page1["items"] + page2["items"]] == ids[::-1]
    assert server.get("/v1/conversations", uid="pages", params={"limit": 0}).status_code == 400


@pytest.mark.parametrize("header", [None, "Bearer nope", "Token", f"Bearer {token('')}"])
def test_http_requires_a_valid_token(server: ServerProcess, header: str | None):
    import httpx

    headers = {"Authorization": header} if header else {}
    for path in ("/v1/conversations", "/v1/conversations/some-id"):
        response = httpx.get(f"{server.http}{path}", headers=headers)
        assert response.status_code == 401, path
        assert response.json()["detail"]


def test_health_metrics_and_api_docs(server: ServerProcess):
    import httpx

    assert httpx.get(f"{server.http}/health").json()["status"] == "ok"
    assert "omi_letta_streams_total" in server.metrics_text()
    assert httpx.get(f"{server.http}/metrics").status_code == 401  # the operator's, not anyone's
    for path in ("/docs", "/redoc"):
        page = httpx.get(f"{server.http}{path}")
        assert page.status_code == 200 and "<html" in page.text.lower(), path
    schema = httpx.get(f"{server.http}/schema/openapi.json").json()
    assert "/v1/conversations/{conversation_id}" in schema["paths"]
