"""Limits, CORS, security headers and who may call what, on a real server (issue 7).

One server with small limits: a 2 s connect interval per user, 4 KiB WebSocket messages, 64 KiB
request bodies, one allowed CORS origin, HSTS, and a METRICS_TOKEN.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
import websockets
from websockets.exceptions import ConnectionClosed

from app.cli.simulator import simulate
from app.http.server import create_app
from app.service.connect_limits import RATE_LIMITED
from app.settings import AuthSettings, Settings
from tests.conftest import FAST
from tests.support import ADMIN_KEY, ServerProcess, token

INTERVAL_S = 2.0
FRAME_LIMIT = 4096
BODY_LIMIT = 65536
ALLOWED = "https://app.example.com"
METRICS_TOKEN = "prometheus-scrape-token-01"

OPEN_ROUTES = {"/health", "/", "/web/{name:str}", "/docs", "/redoc"}
"""Reachable without a token: liveness, the web page and its assets, and the API docs (no user data)."""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        **FAST,
        "DIARIZER": "none",
        "WS_CONNECT_INTERVAL_S": str(INTERVAL_S),
        "WS_MAX_FRAME_BYTES": str(FRAME_LIMIT),
        "MAX_BODY_BYTES": str(BODY_LIMIT),
        "CORS_ORIGINS": ALLOWED,
        "HSTS_MAX_AGE_S": "31536000",
        "METRICS_TOKEN": METRICS_TOKEN,
    }
    proc = ServerProcess(tmp_path_factory.mktemp("limits-server"), env=env).start()
    yield proc
    proc.stop()


def _headers(uid: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(uid)}"}


async def _open(server: ServerProcess, uid: str, query: str = "codec=pcm16&sample_rate=16000") -> Any:
    """A stream of ``uid``: the socket once the server said ``ready``, or the close code and reason it got."""
    ws = await websockets.connect(f"{server.ws}?{query}", additional_headers=_headers(uid))
    try:
        async with asyncio.timeout(30):
            while True:
                message = await ws.recv()
                if message != "ping" and json.loads(message).get("status") == "ready":
                    return ws
    except ConnectionClosed:
        return ws.close_code, ws.close_reason


async def _close_of(ws: Any) -> tuple[int | None, str]:
    """Read until the server closes; its close code and reason."""
    try:
        async with asyncio.timeout(15):
            async for message in ws:
                if message == "ping":
                    await ws.send(b"\x8a\x00")
    except ConnectionClosed:
        pass
    return ws.close_code, ws.close_reason or ""


def _audit(server: ServerProcess, action: str, uid: str, route: str = "%") -> list[dict[str, Any]]:
    """The audit entries of ``action`` by ``uid`` (on ``route``, a LIKE pattern), once at least one is written
    (they are written in batches)."""
    query = "SELECT * FROM audit_log WHERE action = ? AND uid = ? AND route LIKE ?"
    deadline = time.monotonic() + 15
    while True:
        with sqlite3.connect(f"file:{server.data_dir / 'omi-letta.db'}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute(query, (action, uid, route))]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


async def test_a_second_stream_of_a_user_within_the_interval_is_refused_as_omi_does(limited: ServerProcess):
    refused_before = limited.metric("streams_rate_limited_total")
    first = await _open(limited, "rl-alice")
    assert not isinstance(first, tuple), first
    assert await _open(limited, "rl-alice") == (1008, RATE_LIMITED)
    other = await _open(limited, "rl-bob")  # another user is not held up
    assert not isinstance(other, tuple), other
    await first.close()
    await other.close()
    assert limited.metric("streams_rate_limited_total") == refused_before + 1
    [entry] = _audit(limited, "rate-limited", "rl-alice")
    assert (entry["route"], entry["status"], entry["conversation_id"]) == ("ws:/v4/listen", 1008, None)

    await asyncio.sleep(INTERVAL_S)
    again = await _open(limited, "rl-alice")
    assert not isinstance(again, tuple), again
    await again.close()


async def test_a_refused_stream_does_not_take_the_slot(limited: ServerProcess):
    assert (await _open(limited, "rl-carol", "codec=aac&sample_rate=16000"))[0] == 1008  # type: ignore[index]
    opened = await _open(limited, "rl-carol")
    assert not isinstance(opened, tuple), opened
    await opened.close()


async def test_the_simulator_waits_out_the_limit_and_streams(limited: ServerProcess, tmp_path: Path):
    silence = tmp_path / "silence.wav"
    soundfile.write(silence, np.zeros(16_000, dtype=np.float32), 16_000, subtype="PCM_16")
    refused_before = limited.metric("streams_rate_limited_total")
    holder = await _open(limited, "rl-device")  # the device's previous connection, just made
    assert not isinstance(holder, tuple), holder
    result = await simulate(silence, limited.ws, codec="pcm16", token=token("rl-device"), speed=4, settle_s=0.5)
    await holder.close()
    assert [e["status"] for e in result.events if e["type"] == "service_status"][-1] == "ready"
    assert limited.metric("streams_rate_limited_total") > refused_before  # it was refused first, then got in


@pytest.mark.parametrize(
    ("uid", "frame"),
    [
        ("big-binary", b"\x00" * (FRAME_LIMIT + 1)),
        # Under the limit in characters, over it in UTF-8 bytes.
        ("big-text", json.dumps({"type": "x", "pad": "é" * (FRAME_LIMIT // 2)}, ensure_ascii=False)),
        ("huge-binary", b"\x00" * (FRAME_LIMIT * 3)),  # over uvicorn's ws_max_size (2x): its protocol layer closes
    ],
)
async def test_a_message_over_the_limit_closes_the_stream_with_1009(limited: ServerProcess, uid: str, frame: Any):
    before = limited.metric("frames_too_large_total")
    ws = await _open(limited, uid)
    assert not isinstance(ws, tuple), ws
    await ws.send(b"\x00" * 3200)  # 100 ms of PCM: well within the limit
    await ws.send(frame)
    code, reason = await _close_of(ws)
    assert code == 1009
    assert str(FRAME_LIMIT * (2 if uid == "huge-binary" else 1)) in reason
    assert limited.metric("frames_too_large_total") == before + 1
    [entry] = _audit(limited, "stream", uid)
    assert entry["status"] == 1009


async def test_a_message_at_the_limit_is_taken(limited: ServerProcess):
    ws = await _open(limited, "at-limit")
    assert not isinstance(ws, tuple), ws
    await ws.send(b"\x00" * FRAME_LIMIT)
    while await asyncio.wait_for(ws.recv(), 10) != "ping":  # the server still talks to it
        pass
    await ws.close()
    assert ws.close_code == 1000


def test_a_body_over_the_limit_gets_413_with_a_json_reason(limited: ServerProcess):
    segments = [{"text": "x" * 1000, "speaker": "SPEAKER_00", "start": i, "end": i + 1} for i in range(80)]
    response = limited.post("/v1/integrations/omi/realtime-transcript", uid="body", json=segments)
    assert response.status_code == 413
    assert response.json() == {
        "status_code": 413,
        "detail": f"the request body is larger than the {BODY_LIMIT // 1024} KiB this route accepts",
    }
    mcp = httpx.post(
        f"{limited.http}/mcp",
        content=b" " * (BODY_LIMIT + 1),
        headers={**_headers("body"), "Content-Type": "application/json"},
        timeout=30,
    )
    assert mcp.status_code == 413 and "64 KiB" in mcp.json()["detail"]


def test_routes_with_their_own_limit_take_larger_bodies(limited: ServerProcess):
    five_seconds = np.zeros(16_000 * 5, dtype="<i2").tobytes()  # what the OMI cloud sends by default: 160 KB
    response = httpx.post(
        f"{limited.http}/v1/integrations/omi/audio-bytes?uid=big-audio&sample_rate=16000",
        content=five_seconds,
        headers={**_headers("big-audio"), "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    texts = ["word " * 40] * 400  # 80 KB of JSON
    embedded = limited.post("/v1/embeddings", uid="big-embed", json={"input": texts})
    assert embedded.status_code == 200, embedded.text
    assert len(embedded.json()["data"]) == len(texts)


def test_cors_preflight_answers_the_allowed_origin_only(limited: ServerProcess):
    asked = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{limited.http}/v1/conversations", headers={"Origin": ALLOWED, **asked})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in allowed.headers
    refused = httpx.options(f"{limited.http}/v1/conversations", headers={"Origin": "https://evil.example", **asked})
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers

    listed = httpx.get(f"{limited.http}/v1/conversations", headers={"Origin": ALLOWED, **_headers("cors")})
    assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == ALLOWED
    foreign = httpx.get(
        f"{limited.http}/v1/conversations", headers={"Origin": "https://evil.example", **_headers("cors")}
    )
    assert "access-control-allow-origin" not in foreign.headers


def test_every_response_carries_the_security_headers(limited: ServerProcess):
    page = httpx.get(f"{limited.http}/")
    api = limited.get("/v1/conversations", uid="headers")
    refused = httpx.get(f"{limited.http}/v1/conversations")
    mcp = httpx.post(f"{limited.http}/mcp", json={})
    assert (page.status_code, api.status_code, refused.status_code, mcp.status_code) == (200, 200, 401, 401)
    for response in (page, api, refused, mcp):
        headers = response.headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["strict-transport-security"] == "max-age=31536000"
    assert "default-src 'none'" in page.headers["content-security-policy"]  # the page keeps its own policy
    assert page.headers["cache-control"] == "no-cache"
    for response in (api, refused, mcp):
        assert response.headers["cache-control"] == "no-store"


def test_metrics_take_the_operator_token(limited: ServerProcess):
    url = f"{limited.http}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=_headers("someone")).status_code == 401  # a user's token is not enough
    assert httpx.get(url, headers={"Authorization": "Bearer nonsense"}).json()["status_code"] == 401
    for secret in (ADMIN_KEY, METRICS_TOKEN):
        response = httpx.get(url, headers={"Authorization": f"Bearer {secret}"})
        assert response.status_code == 200
        assert "omi_letta_streams_rate_limited_total" in response.text
    assert _audit(limited, "auth-failure", "", "GET /metrics")  # refusals are audited like any other


REQUIRED_QUERY = {"q": "x", "title": "x", "starred": "true", "value": "x"}


def _routes() -> list[tuple[str, str]]:
    """Every (method, path template) of the app, OPTIONS aside, as create_app builds it."""
    app = create_app(Settings(auth=AuthSettings(admin_key=ADMIN_KEY)))
    found = []
    for route in app.routes:
        methods = sorted(getattr(route, "methods", None) or ["POST"]) if route.path != "/v4/listen" else ["WS"]
        found += [(method, route.path) for method in methods if method != "OPTIONS"]
    return found


async def test_every_route_but_health_the_page_and_the_docs_needs_a_token(limited: ServerProcess):
    routes = _routes()
    assert ("POST", "/mcp") in routes and ("WS", "/v4/listen") in routes and ("GET", "/metrics") in routes
    answers: dict[tuple[str, str], int | None] = {}
    async with httpx.AsyncClient(base_url=limited.http, timeout=30) as http:
        for method, template in routes:
            path = template.replace("{name:str}", "app.js").replace("{path:str}", "openapi.json")
            path = re.sub(r"\{[^}]+\}", "not-yours", path)
            if method == "WS":
                code, reason = await _close_of(await websockets.connect(limited.ws))
                answers[method, template] = 401 if (code, reason) == (1008, "Authorization header not found") else code
            else:
                # A well-formed request (the routes' required query parameters), so the token is what decides.
                response = await http.request(method, path, params=REQUIRED_QUERY)
                answers[method, template] = response.status_code
    public = {k: v for k, v in answers.items() if k[1] in OPEN_ROUTES or k[1].startswith("/schema")}
    assert {template for _, template in public} >= OPEN_ROUTES
    assert all(status == 200 for status in public.values()), public
    guarded = {k: v for k, v in answers.items() if k not in public}
    assert guarded and all(status == 401 for status in guarded.values()), guarded
