"""Nobody reaches another user's data: every route of the app and every MCP tool, called as bob with alice's ids.

One real server holds alice's data: a completed conversation and one in progress (from the OMI
webhooks, with her API token), a voice profile, a day summary and indexed turns. Bob then calls
each route and tool with alice's ids, queries, segment ids and uid, with his own credentials. After
every case alice's data reads back exactly as before. Each case is registered for the routes it
covers, and :func:`test_every_route_and_tool_has_an_isolation_case` walks the app's routes and the
MCP server's tools, so a new route or tool without a case here fails. Chat is proved against the
real local Letta server in :func:`test_bobs_chat_reaches_bobs_agent_and_none_of_alices_memory`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import numpy as np
import pytest
import soundfile
import websockets
from letta_client import Letta
from litestar.routes import ASGIRoute, HTTPRoute, WebSocketRoute
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from app.http.memory_mcp import MemoryMcp
from app.http.server import create_app
from app.ops.letta_local import LocalLetta
from app.settings import Settings
from memory.understand.understanding import FACTS_CONVERSATION
from tests.integration.test_delivery import agent_of, serve, wait_drained
from tests.integration.test_live import listening
from tests.integration.test_webhooks import MEMORY, api_token, post_hook, realtime_segment
from tests.llm_standin import ScriptedLlm
from tests.offline_files import app_file
from tests.support import ServerProcess, chat_events, have_espeak, speak, token

ALICE, BOB = "iso-alice", "iso-bob"
SECRET = "The spare key to the clinic is under the blue heron statue by the marmalade shop."
QUERY = "blue heron statue spare key"
SECRET_WORDS = ("heron", "marmalade")  # words only alice's data holds
LIVE_TEXTS = ("Tomorrow we move the marmalade crates at dawn.", "The heron feeder needs refilling too.")
PROFILE_NAME = "Diane"

PUBLIC = {
    "GET /health": "liveness and the configured engines",
    "GET /": "the web page's HTML",
    "GET /web/{name:str}": "the web page's script and style sheet",
    "GET /docs": "Swagger UI",
    "GET /redoc": "Redoc",
    "GET /schema": "the OpenAPI schema and its viewers",
    "GET /schema/docs": "the OpenAPI schema and its viewers",
    "GET /schema/redoc": "the OpenAPI schema and its viewers",
    "GET /schema/{path:str}": "the OpenAPI schema and its viewers",
    "GET /schema/openapi.json": "the OpenAPI schema and its viewers",
    "GET /schema/oauth2-redirect.html": "the OpenAPI schema and its viewers",
}
"""Routes that hold no user data, with what they serve."""
PUBLIC_EXAMPLES = ("/health", "/", "/web/app.js", "/web/style.css", "/docs", "/redoc", "/schema/openapi.json")


@dataclass
class World:
    """The server, both users' credentials, and what alice owns."""

    server: ServerProcess
    alice_key: str
    bob_key: str
    done_id: str = ""  # alice's completed conversation
    live_id: str = ""  # alice's conversation in progress
    live_omi_ids: list[str] = field(default_factory=list)  # the OMI segment ids she sent for it
    profile_id: str = ""
    summary_id: str = ""
    sync_job_id: str = ""  # alice's upload of an offline recording
    sync_file: tuple[str, bytes] = ("", b"")
    synced_id: str = ""  # the conversation it made
    memory_id: str = ""  # a fact about alice (the app's memories)
    baseline: dict[str, Any] = field(default_factory=dict)

    @property
    def alice_ids(self) -> set[str]:
        return {
            self.done_id,
            self.live_id,
            self.profile_id,
            self.summary_id,
            self.sync_job_id,
            self.synced_id,
            self.memory_id,
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything of alice's that the API shows her, read with her API token."""
        bearer = {"Authorization": f"Bearer {self.alice_key}"}

        def get(path: str, **params: Any) -> Any:
            response = httpx.get(f"{self.server.http}{path}", headers=bearer, params=params, timeout=30)
            assert response.status_code == 200, (path, response.status_code, response.text)
            return response.json()

        hits = get("/v1/memory/search", q=QUERY, limit=20)["items"]
        return {
            "conversations": get("/v1/conversations/page", limit=200),
            "done": get(f"/v1/conversations/{self.done_id}"),
            "live": get(f"/v1/conversations/{self.live_id}"),
            "speakers": get("/v1/speakers"),
            "profile": get(f"/v1/speakers/{self.profile_id}"),
            "summaries": get("/v1/integrations/omi/day-summaries"),
            "people": get("/v1/users/people"),
            "speech_profile": get("/v3/speech-profile"),
            "language": get("/v1/users/language"),
            "onboarding": get("/v1/users/onboarding"),
            "memories": get("/v3/memories"),
            "hits": sorted((h["turn_id"], h["conversation_id"], h["text"]) for h in hits),
        }

    def assert_intact(self) -> None:
        """Alice's data is exactly as it was before bob's calls."""
        now = self.snapshot()
        for part, before in self.baseline.items():
            assert now[part] == before, f"alice's {part} changed"
        assert now["live"]["status"] == "in_progress"

    def leaks(self, text: str) -> list[str]:
        """What of alice's appears in ``text``: her ids, her uid, her words."""
        found = [i for i in self.alice_ids if i and i in text]
        found += [w for w in SECRET_WORDS if w in text.lower()]
        return found + ([ALICE] if ALICE in text else [])

    def bobs_conversations(self) -> set[str]:
        """Bob's conversation ids, and the documents of his facts (``facts``) once he has some."""
        ids = {c["id"] for c in self.as_bob("GET", "/v1/conversations/page", params={"limit": 200}).json()["items"]}
        return ids | ({FACTS_CONVERSATION} if self.as_bob("GET", "/v3/memories").json() else set())

    def as_bob(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token(BOB)}", **kwargs.pop("headers", {})}
        return self.call(method, path, headers=headers, **kwargs)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request with only the credentials given (none unless in ``headers`` or the URL)."""
        return httpx.request(method, f"{self.server.http}{path}", timeout=60, **kwargs)


Case = Callable[[World], Awaitable[None]]
CASES: dict[str, Case] = {}
COVERED: dict[str, str] = {}  # route or tool -> the case or test that covers it


def case(*routes: str) -> Callable[[Case], Case]:
    """Register an isolation case for ``routes`` (``"GET /path"``, ``"WS /path"``, ``"MCP tool"``)."""

    def register(fn: Case) -> Case:
        CASES[fn.__name__] = fn
        COVERED.update(dict.fromkeys(routes, fn.__name__))
        return fn

    return register


def app_routes() -> set[str]:
    """Every route of the app as ``METHOD path`` (``WS``/``ASGI`` for the socket and the MCP mount)."""
    app = create_app(Settings())
    found: set[str] = set()
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            found |= {f"{m} {route.path}" for m in route.methods if m != "OPTIONS"}  # OPTIONS: CORS preflight
        elif isinstance(route, WebSocketRoute):
            found.add(f"WS {route.path}")
        elif isinstance(route, ASGIRoute):
            found.add(f"ASGI {route.path}")
        else:
            raise AssertionError(f"a route of an unknown kind: {route!r}")
    return found


async def mcp_tools() -> set[str]:
    """Every tool of the MCP server as ``MCP name``."""
    tools = await MemoryMcp(lambda: None).server.list_tools()  # never called: listing needs no services
    return {f"MCP {t.name}" for t in tools}


async def test_every_route_and_tool_has_an_isolation_case() -> None:
    routes = app_routes() | await mcp_tools()
    assert "GET /v1/conversations/{conversation_id:str}" in routes and "MCP search_memory" in routes
    missing = sorted(routes - set(COVERED) - set(PUBLIC))
    assert not missing, f"routes or tools without a cross-user isolation case: {missing}"
    assert not set(COVERED) & set(PUBLIC), "a public route has a case: is it public?"
    stale = sorted((set(COVERED) | set(PUBLIC)) - routes)
    assert not stale, f"cases for routes the app no longer has: {stale}"


# --- alice's world ---------------------------------------------------------------------------------


def _enroll_audio(folder: Path) -> Path:
    if not have_espeak():
        pytest.fail("espeak-ng is not installed; `make test` installs it (apt-get install espeak-ng)")
    audio = speak("Hello, this is Diane. I am calling about the report for the clinic next week.", "en-us+f3", folder)
    path = folder / "diane.wav"
    soundfile.write(path, audio, 16_000, subtype="PCM_16")
    return path


def _omi_conversation(text: str) -> dict[str, Any]:
    memory = json.loads(json.dumps(MEMORY))
    memory["structured"]["title"] = "Where the spare key is"
    memory["transcript_segments"][1]["text"] = text
    return memory


def _wait(done: Callable[[], object], what: str, server: ServerProcess, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"{what}:\n{server.log()[-3000:]}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("isolation")
    env = {
        "OUTBOX_POLL_S": "0.2",
        "CONVERSATION_TIMEOUT_S": "3600",  # alice's conversation stays in progress throughout
        "WS_CONNECT_INTERVAL_S": "0",
    }
    server = ServerProcess(folder / "server", env=env).start()
    try:
        w = World(server, alice_key=api_token(server, ALICE), bob_key=api_token(server, BOB))
        reply = post_hook(server, "memory-created", w.alice_key, f"uid={ALICE}", body=_omi_conversation(SECRET))
        assert reply.status_code == 200, reply.text
        [done] = server.get("/v1/conversations/page", uid=ALICE).json()["items"]
        w.done_id = done["id"]

        now = time.time()
        w.live_omi_ids = [f"live-{i}" for i in range(len(LIVE_TEXTS))]
        segments = [
            realtime_segment(sid, text, 1.0 + 3 * i, 3.0 + 3 * i, speaker=i)
            for i, (sid, text) in enumerate(zip(w.live_omi_ids, LIVE_TEXTS, strict=True))
        ]
        reply = post_hook(server, "realtime-transcript", w.alice_key, f"uid={ALICE}", body={"segments": segments})
        assert reply.status_code == 200, reply.text
        live = next(c for c in server.get("/v1/conversations/page", uid=ALICE).json()["items"] if c["id"] != w.done_id)
        assert live["status"] == "in_progress" and live["created_at"] >= time.strftime("%Y", time.gmtime(now))
        w.live_id = live["id"]

        with _enroll_audio(folder).open("rb") as audio:
            enrolled = server.post(
                "/v1/speakers/enroll", uid=ALICE, files={"file": ("diane.wav", audio)}, data={"name": PROFILE_NAME}
            )
        assert enrolled.status_code == 201, enrolled.text
        w.profile_id = enrolled.json()["id"]

        assert server.patch("/v1/users/language", uid=ALICE, json={"language": "de"}).status_code == 200
        fact = server.post("/v3/memories", uid=ALICE, json={"content": f"Alice keeps a {SECRET_WORDS[0]} diary."})
        assert fact.status_code == 200, fact.text
        w.memory_id = fact.json()["id"]

        summary = {"summary": "A day of heron watching.", "uid": ALICE, "created_at": "2025-01-10T21:00:00+00:00"}
        assert post_hook(server, "day-summary", w.alice_key, f"uid={ALICE}", body=summary).status_code == 200
        w.summary_id = server.get("/v1/integrations/omi/day-summaries", uid=ALICE).json()["items"][0]["id"]

        w.sync_file = app_file(speak(SECRET, "en-us", folder), "opus_fs320", now - 86_400)
        job = _sync(server, token(ALICE), w.sync_file)
        assert job.status_code == 202, job.text
        w.sync_job_id = job.json()["job_id"]
        w.synced_id = _synced(server, token(ALICE), w.sync_job_id)["result"]["new_memories"][0]

        def indexed() -> bool:
            hits = server.get("/v1/memory/search", uid=ALICE, params={"q": QUERY}).json()["items"]
            return any("heron" in h["text"] for h in hits) and any(h["conversation_id"] == w.live_id for h in hits)

        _wait(indexed, "alice's turns were not indexed", server)
        w.baseline = w.snapshot()
        yield w
    finally:
        server.stop()


# --- the cases -------------------------------------------------------------------------------------


def _assert_not_found(response: httpx.Response, w: World) -> None:
    assert response.status_code == 404, (response.status_code, response.text)
    assert response.json()["detail"]
    echoed = response.text  # the id bob asked for may be named back to him
    for asked in (w.done_id, w.live_id, w.profile_id, w.memory_id):
        echoed = echoed.replace(asked, "")
    assert not w.leaks(echoed)


@case("GET /v1/conversations", "GET /v1/conversations/page")
async def list_conversations(w: World) -> None:
    for path in ("/v1/conversations", "/v1/conversations/page"):
        for params in ({}, {"limit": 200, "offset": 0}, {"statuses": "in_progress", "limit": 1}, {"starred": True}):
            response = w.as_bob("GET", path, params=params)
            assert response.status_code == 200
            assert not w.leaks(response.text), response.text


@case("POST /v1/conversations")
async def finish_the_conversation_in_progress(w: World) -> None:
    """Bob's "process now" finishes bob's conversation, if he has one, and never alice's."""
    response = w.as_bob("POST", "/v1/conversations", json={})
    assert response.status_code in (200, 404), response.text
    assert not w.leaks(response.text), response.text


@case("POST /v1/conversations/search")
async def search_conversations(w: World) -> None:
    for body in ({"query": QUERY}, {"query": "", "per_page": 100}, {"query": "heron", "include_discarded": False}):
        response = w.as_bob("POST", "/v1/conversations/search", json=body)
        assert response.status_code == 200, response.text
        assert not w.leaks(response.text), response.text


@case(
    "PATCH /v1/conversations/{conversation_id:str}/title",
    "PATCH /v1/conversations/{conversation_id:str}/starred",
    "PATCH /v1/conversations/{conversation_id:str}/segments/text",
    "PATCH /v1/conversations/{conversation_id:str}/segments/assign-bulk",
    "POST /v1/conversations/{conversation_id:str}/reprocess",
)
async def edit_a_conversation(w: World) -> None:
    for cid in (w.done_id, w.live_id):
        segment_ids = [s["id"] for s in w.baseline["done" if cid == w.done_id else "live"]["transcript_segments"]]
        _assert_not_found(w.as_bob("PATCH", f"/v1/conversations/{cid}/title", params={"title": "Mallory's"}), w)
        _assert_not_found(w.as_bob("PATCH", f"/v1/conversations/{cid}/starred", params={"starred": True}), w)
        body = {"segment_id": segment_ids[0], "text": "Mallory was here."}
        _assert_not_found(w.as_bob("PATCH", f"/v1/conversations/{cid}/segments/text", json=body), w)
        for assign in ({"assign_type": "is_user", "value": "true"}, {"assign_type": "person_id", "value": None}):
            body = {"segment_ids": segment_ids, **assign}
            _assert_not_found(w.as_bob("PATCH", f"/v1/conversations/{cid}/segments/assign-bulk", json=body), w)
        _assert_not_found(w.as_bob("POST", f"/v1/conversations/{cid}/reprocess"), w)


@case("GET /v1/users/people", "POST /v1/users/people")
async def people(w: World) -> None:
    mine = w.as_bob("POST", "/v1/users/people", json={"name": PROFILE_NAME})  # alice's person's name: bob's own
    assert mine.status_code == 200 and mine.json()["id"] != w.profile_id, mine.text
    listed = w.as_bob("GET", "/v1/users/people")
    assert listed.status_code == 200 and w.profile_id not in listed.text
    assert mine.json()["id"] in [p["id"] for p in listed.json()]


@case("GET /v3/memories", "POST /v3/memories")
async def memories(w: World) -> None:
    assert w.as_bob("GET", "/v3/memories").json() == []
    mine = w.as_bob("POST", "/v3/memories", json={"content": "Bob keeps a diary."})  # no word of hers
    assert mine.status_code == 200 and mine.json()["id"] != w.memory_id and mine.json()["uid"] != ALICE, mine.text
    assert [m["id"] for m in w.as_bob("GET", "/v3/memories").json()] == [mine.json()["id"]]


@case("PATCH /v3/memories/{memory_id:str}", "DELETE /v3/memories/{memory_id:str}")
async def one_memory(w: World) -> None:
    _assert_not_found(w.as_bob("PATCH", f"/v3/memories/{w.memory_id}", params={"value": "Mallory was here."}), w)
    _assert_not_found(w.as_bob("DELETE", f"/v3/memories/{w.memory_id}"), w)


@case(
    "GET /v1/users/people/{person_id:str}",
    "PATCH /v1/users/people/{person_id:str}/name",
    "DELETE /v1/users/people/{person_id:str}",
)
async def one_person(w: World) -> None:
    _assert_not_found(w.as_bob("GET", f"/v1/users/people/{w.profile_id}"), w)
    _assert_not_found(w.as_bob("PATCH", f"/v1/users/people/{w.profile_id}/name", params={"value": "Mallory"}), w)
    _assert_not_found(w.as_bob("DELETE", f"/v1/users/people/{w.profile_id}"), w)


@case("GET /v3/speech-profile", "POST /v3/upload-audio", "GET /v4/speech-profile")
async def speech_profile(w: World) -> None:
    assert w.as_bob("GET", "/v3/speech-profile").json() == {"has_profile": False}
    audio = _enroll_audio(w.server.data_dir.parent)
    with audio.open("rb") as f:
        uploaded = w.as_bob("POST", "/v3/upload-audio", files={"file": ("speaker_profile.wav", f)})
    assert uploaded.status_code == 200, uploaded.text
    assert w.as_bob("GET", "/v3/speech-profile").json() == {"has_profile": True}
    assert w.as_bob("GET", "/v4/speech-profile").json() == {"url": None}


@case(
    "GET /v1/users/language",
    "PATCH /v1/users/language",
    "GET /v1/users/onboarding",
    "PATCH /v1/users/onboarding",
    "POST /v1/users/fcm-token",
)
async def user_settings(w: World) -> None:
    assert w.as_bob("GET", "/v1/users/language").json() == {"language": None}  # alice's "de" is hers
    assert w.as_bob("PATCH", "/v1/users/language", json={"language": "fr"}).status_code == 200
    assert w.as_bob("GET", "/v1/users/language").json() == {"language": "fr"}
    assert w.as_bob("PATCH", "/v1/users/onboarding", json={"completed": False}).status_code == 200
    assert w.as_bob("GET", "/v1/users/onboarding").json()["completed"] is False
    token_body = {"fcm_token": "bobs-token", "time_zone": "Europe/Paris"}
    assert w.as_bob("POST", "/v1/users/fcm-token", json=token_body).status_code == 200


@case("GET /v2/messages", "POST /v2/messages", "DELETE /v2/messages")
async def app_chat_without_letta(w: World) -> None:
    """No Letta here: bob's chat explains why; the real agent case is below."""
    from tests.omi_app_schema import decode_stream

    asked = w.as_bob("POST", "/v2/messages", json={"text": f"What did {ALICE} say about the {QUERY}?"})
    assert asked.status_code == 200 and not w.leaks(asked.text.replace(ALICE, "")), asked.text
    assert decode_stream(asked.content)[-1][0] == "done"
    for method in ("GET", "DELETE"):
        response = w.as_bob(method, "/v2/messages")
        assert response.status_code == 200 and not w.leaks(response.text), response.text


@case("GET /v1/conversations/{conversation_id:str}", "DELETE /v1/conversations/{conversation_id:str}")
async def read_or_delete_a_conversation(w: World) -> None:
    for cid in (w.done_id, w.live_id):
        _assert_not_found(w.as_bob("GET", f"/v1/conversations/{cid}"), w)
        _assert_not_found(w.as_bob("DELETE", f"/v1/conversations/{cid}"), w)


@case("POST /v1/conversations/{conversation_id:str}/close")
async def close_a_conversation(w: World) -> None:
    for cid in (w.live_id, w.done_id):
        _assert_not_found(w.as_bob("POST", f"/v1/conversations/{cid}/close"), w)


@case("PATCH /v1/conversations/{conversation_id:str}/speakers")
async def relabel_a_speaker(w: World) -> None:
    for cid in (w.done_id, w.live_id):
        for body in ({"speaker_id": 1, "name": "Mallory"}, {"speaker_id": 0, "is_user": True}):
            _assert_not_found(w.as_bob("PATCH", f"/v1/conversations/{cid}/speakers", json=body), w)


@case("GET /v1/speakers", "POST /v1/speakers/enroll")
async def list_and_enroll_speakers(w: World) -> None:
    audio = _enroll_audio(w.server.data_dir.parent)
    with audio.open("rb") as f:  # the name of alice's profile: bob gets a profile of his own
        mine = w.as_bob("POST", "/v1/speakers/enroll", files={"file": ("d.wav", f)}, data={"name": PROFILE_NAME})
    assert mine.status_code == 201, mine.text
    assert mine.json()["id"] != w.profile_id and mine.json()["name"] == PROFILE_NAME
    listed = w.as_bob("GET", "/v1/speakers")
    assert listed.status_code == 200 and w.profile_id not in listed.text
    assert mine.json()["id"] in [p["id"] for p in listed.json()["items"]]  # beside his own speech profile, if any


@case("GET /v1/speakers/{speaker_id:str}", "PATCH /v1/speakers/{speaker_id:str}")
@case("DELETE /v1/speakers/{speaker_id:str}")
async def one_speaker(w: World) -> None:
    _assert_not_found(w.as_bob("GET", f"/v1/speakers/{w.profile_id}"), w)
    _assert_not_found(w.as_bob("PATCH", f"/v1/speakers/{w.profile_id}", json={"name": "Mallory"}), w)
    _assert_not_found(w.as_bob("DELETE", f"/v1/speakers/{w.profile_id}"), w)


@case("GET /v1/memory/search")
async def search(w: World) -> None:
    for params in (
        {"q": QUERY},
        {"q": "heron", "conversation_id": w.done_id},
        {"q": "marmalade crates", "conversation_id": w.live_id, "limit": 100},
        {"q": "spare key", "speaker": PROFILE_NAME},
    ):
        response = w.as_bob("GET", "/v1/memory/search", params=params)
        assert response.status_code == 200, response.text
        hits = response.json()["items"]
        assert not w.leaks(json.dumps(hits)), hits
        assert {h["conversation_id"] for h in hits} <= w.bobs_conversations(), hits


@case("POST /v1/embeddings")
async def embeddings(w: World) -> None:
    """The service's embedding model: the same text gives the same vector to anyone; nothing stored is read."""
    body = {"input": [SECRET, "hello"]}
    bobs = w.as_bob("POST", "/v1/embeddings", json=body)
    alices = w.server.post("/v1/embeddings", uid=ALICE, json=body)
    assert bobs.status_code == alices.status_code == 200
    for b, a in zip(bobs.json()["data"], alices.json()["data"], strict=True):
        assert np.allclose(b["embedding"], a["embedding"], atol=1e-5)


@case("POST /v1/chat")
async def chat_without_letta(w: World) -> None:
    """This server has no Letta: bob is told why, and nothing of alice's comes back (the agent case is below)."""
    response = w.as_bob("POST", "/v1/chat", json={"message": f"What did {ALICE} say about the {QUERY}?"})
    assert response.status_code == 503 and "LETTA_DELIVERY" in response.json()["detail"]


@case("GET /metrics")
async def metrics(w: World) -> None:
    """Aggregate counters only: whoever may read them, nothing in them is alice's."""
    for headers in ({}, {"Authorization": f"Bearer {token(BOB)}"}):
        response = w.call("GET", "/metrics", headers=headers)
        assert response.status_code in (200, 401), response.status_code
        assert not w.leaks(response.text), response.text


@case("GET /v1/live")
async def live(w: World) -> None:
    async with listening(w.server, w.alice_key) as hers, listening(w.server, token(BOB)) as his:
        segment = realtime_segment("live-late", "One more heron sighting.", 8.0, 9.0, speaker=1)
        heard = post_hook(w.server, "realtime-transcript", w.alice_key, f"uid={ALICE}", body=[segment])
        assert heard.status_code == 200, heard.text
        await hers.until(lambda: hers.of("segments"), timeout_s=10)  # alice's own page hears it
        await asyncio.sleep(1.0)  # and bob's had the same chance
        assert [event for event, _ in his.events] == ["ready"]
    w.live_omi_ids.append("live-late")
    w.baseline = w.snapshot()  # alice's own change


@case("WS /v4/listen")
async def listen(w: World) -> None:
    query = f"uid={ALICE}&codec=pcm16&sample_rate=16000&language=en"
    headers = {"Authorization": f"Bearer {token(BOB)}"}
    async with websockets.connect(f"{w.server.ws}?{query}", additional_headers=headers) as ws:
        seen: list[Any] = []
        async with asyncio.timeout(30):
            while not any(isinstance(m, dict) and m.get("status") == "ready" for m in seen):
                message = await ws.recv()
                seen.append(message if message == "ping" else json.loads(message))
        live = w.snapshot()["live"]["transcript_segments"]
        assigned = {
            "type": "speaker_assigned",
            "speaker_id": 1,
            "person_id": "mallory",
            "person_name": "Mallory",
            "segment_ids": [s["id"] for s in live] + w.live_omi_ids,
        }
        await ws.send(json.dumps(assigned))
        await ws.send(b"\x00" * 32_000)  # a second of silence: bob's stream, not alice's
        await asyncio.sleep(1.0)
    assert not w.leaks(json.dumps(seen)), seen
    assert not any(isinstance(m, dict) and m.get("type") == "last_memory" for m in seen)


HOOKS = "/v1/integrations/omi"


def _sync(server: ServerProcess, bearer: str, file: tuple[str, bytes], version: int = 2) -> httpx.Response:
    name, body = file
    return httpx.post(
        f"{server.http}/v{version}/sync-local-files",
        files=[("files", (name, body, "application/octet-stream"))],
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=300,
    )


def _synced(server: ServerProcess, bearer: str, job_id: str) -> dict[str, Any]:
    """The job once it ended."""
    found: dict[str, Any] = {}

    def ended() -> bool:
        reply = httpx.get(f"{server.http}/v2/sync-local-files/{job_id}", headers={"Authorization": f"Bearer {bearer}"})
        found.update(reply.json())
        return found.get("status") in ("completed", "partial_failure", "failed")

    _wait(ended, "the sync job did not end", server, timeout_s=180)
    return found


@case("POST /v1/integrations/omi/memory-created")
async def memory_created(w: World) -> None:
    body = _omi_conversation("Bob says the key is with the neighbour.")  # the same OMI id as alice's
    _refused(w, "memory-created", body=body)
    stored = post_hook(w.server, "memory-created", w.bob_key, f"uid={BOB}", body=body)
    assert stored.status_code == 200, stored.text
    [bobs] = [c for c in w.as_bob("GET", "/v1/conversations/page").json()["items"] if c["status"] == "completed"]
    assert bobs["id"] not in w.alice_ids and "neighbour" in json.dumps(bobs)


@case("POST /v1/integrations/omi/realtime-transcript")
async def realtime_transcript(w: World) -> None:
    segments = [realtime_segment(sid, "Bob was here.", 1.0, 2.0, speaker=1) for sid in w.live_omi_ids]
    _refused(w, "realtime-transcript", body={"segments": segments})
    added = post_hook(w.server, "realtime-transcript", w.bob_key, f"uid={BOB}", body=segments)
    assert added.status_code == 200, added.text
    bobs = [c for c in w.as_bob("GET", "/v1/conversations/page").json()["items"] if c["status"] == "in_progress"]
    assert [c["id"] for c in bobs] != [w.live_id] and "Bob was here." in json.dumps(bobs)


@case("POST /v1/integrations/omi/audio-bytes")
async def audio_bytes(w: World) -> None:
    silence = b"\x00" * 32_000
    _refused(w, "audio-bytes", content=silence)
    fed = post_hook(w.server, "audio-bytes", w.bob_key, f"uid={BOB}&sample_rate=16000", content=silence)
    assert fed.status_code == 200, fed.text


@case("POST /v1/integrations/omi/day-summary", "GET /v1/integrations/omi/day-summaries")
async def day_summaries(w: World) -> None:
    body = {"summary": "Bob's quiet day.", "created_at": "2025-01-11T21:00:00+00:00"}
    _refused(w, "day-summary", body=body)
    claimed = post_hook(w.server, "day-summary", w.bob_key, f"uid={BOB}", body={**body, "uid": ALICE})
    assert claimed.status_code == 422 and claimed.json()["extra"]["field"] == "$.uid", claimed.text
    assert post_hook(w.server, "day-summary", w.bob_key, f"uid={BOB}", body=body).status_code == 200
    listed = w.call("GET", f"{HOOKS}/day-summaries?key={w.bob_key}")
    assert listed.status_code == 200 and [s["summary"] for s in listed.json()["items"]] == [body["summary"]]
    assert w.call("GET", f"{HOOKS}/day-summaries?key={w.bob_key}&uid={ALICE}").status_code == 401


async def _tool(w: World, bearer: str, tool: str, **args: Any) -> str:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {bearer}"}, timeout=60) as http,
        Client(streamable_http_client(f"{w.server.http}/mcp", http_client=http)) as client,
    ):
        result = await client.call_tool(tool, args)
    assert not result.is_error, result
    return "\n".join(part.text for part in result.content if hasattr(part, "text"))


@case("ASGI /mcp", "MCP search_memory", "MCP get_conversation", "MCP list_conversations", "MCP who_said")
async def mcp(w: World) -> None:
    assert w.done_id in await _tool(w, w.alice_key, "get_conversation", id=w.done_id)  # the tools work for her
    bob = token(BOB)
    answers = {
        "search_memory": await _tool(w, bob, "search_memory", query=QUERY, since="2000-01-01", limit=50),
        "who_said": await _tool(w, bob, "who_said", text=SECRET),
        "list_conversations": await _tool(w, bob, "list_conversations", since="2000-01-01", limit=50),
    }
    for cid in (w.done_id, w.live_id):
        answers[f"get_conversation {cid}"] = await _tool(w, bob, "get_conversation", id=cid)
        assert answers[f"get_conversation {cid}"] == f"There is no conversation {cid}."
    for name, asked in (("search_memory", QUERY), ("who_said", SECRET), ("list_conversations", "")):
        answer = answers[name].replace(repr(asked), "")  # "Nothing in memory matches '<query>'."
        assert not w.leaks(answer), answers[name]
        named = set(re.findall(r"[0-9a-f]{8}-[0-9a-f-]{27}", answer))
        assert named <= w.bobs_conversations(), answers[name]


@case("DELETE /v1/users/me/data")
async def erase(w: World) -> None:
    erased = w.as_bob("DELETE", "/v1/users/me/data")
    assert erased.status_code == 202, erased.text
    counts = erased.json()
    assert counts["conversations"] >= 1 and counts["speakers"] >= 1  # his people and his speech profile
    assert (counts["tokens"], counts["day_summaries"]) == (1, 1)
    wait_drained_index(w.server)
    assert w.as_bob("GET", "/v1/conversations/page").json()["total"] == 0


def wait_drained_index(server: ServerProcess) -> None:
    """Until the index has taken every queued change (the erase travels through the outbox)."""
    _wait(lambda: server.metric("outbox_pending_index") == 0, "the outbox did not drain", server)


@case("POST /v1/sync-local-files", "POST /v2/sync-local-files", "GET /v2/sync-local-files/{job_id:str}")
async def offline_sync(w: World) -> None:
    peek = w.as_bob("GET", f"/v2/sync-local-files/{w.sync_job_id}")
    assert peek.status_code == 403 and not w.leaks(peek.text.replace(w.sync_job_id, "")), peek.text
    mine = _sync(w.server, token(BOB), w.sync_file)  # the very same file: bob's own job, bob's own conversation
    assert mine.status_code == 202 and mine.json()["job_id"] != w.sync_job_id, mine.text
    job = _synced(w.server, token(BOB), mine.json()["job_id"])
    [bobs] = job["result"]["new_memories"]
    assert bobs not in w.alice_ids and bobs in w.bobs_conversations()
    again = _sync(w.server, token(BOB), w.sync_file, version=1)
    assert again.status_code == 200 and again.json()["new_memories"] == [bobs], again.text


def _refused(w: World, name: str, **kwargs: Any) -> None:
    """Bob's key, or bob's bearer token, with alice's uid in the URL: 401, whatever the body."""
    response = post_hook(w.server, name, w.bob_key, f"uid={ALICE}", **kwargs)
    assert response.status_code == 401 and response.json()["detail"], response.text
    headers = {"Authorization": f"Bearer {token(BOB)}"}
    if "content" in kwargs:
        headers["Content-Type"] = "application/octet-stream"
    response = httpx.post(
        f"{w.server.http}{HOOKS}/{name}?uid={ALICE}",
        headers=headers,
        timeout=30,
        **({"json": kwargs["body"]} if "body" in kwargs else {"content": kwargs["content"]}),
    )
    assert response.status_code == 401 and response.json()["detail"], response.text


@pytest.mark.parametrize("name", list(CASES))
async def test_bob_reaches_nothing_of_alices(world: World, name: str) -> None:
    await CASES[name](world)
    world.assert_intact()
    assert world.server.get("/v1/conversations", uid=ALICE).status_code == 200


async def test_alice_has_everything_afterwards_and_the_public_routes_hold_nothing_of_hers(world: World) -> None:
    wait_drained_index(world.server)
    world.assert_intact()
    assert {c["id"] for c in world.snapshot()["conversations"]["items"]} == {
        world.done_id,
        world.live_id,
        world.synced_id,
    }
    assert any("heron" in h[2] for h in world.snapshot()["hits"]), "alice's index entries survived bob's erase"
    for path in PUBLIC_EXAMPLES:
        response = world.call("GET", path)
        assert response.status_code == 200, path
        assert not world.leaks(response.text), path
    log = world.server.log()
    assert "Traceback" not in log and SECRET not in log and world.alice_key not in log


# --- chat, through the real local Letta server -------------------------------------------------------

LLM_KEY = "sk-standin-0001"


async def test_bobs_chat_reaches_bobs_agent_and_none_of_alices_memory(tmp_path: Path, letta: LocalLetta) -> None:
    alice, bob = f"chat-alice-{uuid.uuid4().hex[:6]}", f"chat-bob-{uuid.uuid4().hex[:6]}"
    with ScriptedLlm(api_key=LLM_KEY) as llm:
        server = serve(tmp_path, letta, LLM_BASE_URL=llm.base_url, LLM_MODEL=llm.model, LLM_API_KEY=LLM_KEY)
        try:
            key = api_token(server, alice)
            stored = post_hook(server, "memory-created", key, f"uid={alice}", body=_omi_conversation(SECRET))
            assert stored.status_code == 200, stored.text
            wait_drained(server)

            hers = await chat_events(server.http, token(alice), QUERY)
            found = "".join(d["text"] for e, d in hers if e == "tool_return")
            assert "heron" in found, hers  # the tool finds it for her

            question = f"Bob asks: where is the {QUERY}?"
            his = await chat_events(server.http, token(bob), question)
            returns = [d for e, d in his if e == "tool_return"]
            answer = "".join(d["text"] for e, d in his if e == "assistant")
            assert returns and all(r["text"].startswith("Nothing in memory matches") for r in returns), returns
            assert answer and not [w for w in SECRET_WORDS if w in answer.replace(QUERY, "").lower()], answer

            client = Letta(base_url=letta.base_url, max_retries=0, timeout=60)
            alices_agent, bobs_agent = agent_of(client, alice), agent_of(client, bob)
            assert alices_agent != bobs_agent

            def said(agent: str) -> str:
                return json.dumps([m.model_dump(mode="json") for m in client.agents.messages.list(agent, limit=200)])

            assert question in said(bobs_agent) and question not in said(alices_agent)
            # The app's chat list: each sees their own messages only.
            async with httpx.AsyncClient(base_url=server.http, timeout=60) as http:
                bobs_list = await http.get("/v2/messages", headers={"Authorization": f"Bearer {token(bob)}"})
                hers_list = await http.get("/v2/messages", headers={"Authorization": f"Bearer {token(alice)}"})
            assert question in bobs_list.text and "marmalade" not in bobs_list.text, bobs_list.text
            assert QUERY in hers_list.text and question not in hers_list.text, hers_list.text
            passages = [p.text for p in client.agents.passages.list(bobs_agent, limit=1000)]
            assert not [p for p in passages if "heron" in p], "bob's agent holds none of alice's passages"
        finally:
            server.stop()
    with contextlib.suppress(FileNotFoundError):
        assert "Traceback" not in (tmp_path / "server.log").read_text()
