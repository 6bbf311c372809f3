"""The OMI app's Firebase ID tokens on a real server: HTTP routes and the device WebSocket."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import websockets

from tests.support import ServerProcess
from tests.unit.test_firebase import PROJECT, Jwks, new_key, token


@pytest.fixture(scope="module")
def firebase_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Jwks]]:
    jwks = Jwks()
    server = ServerProcess(
        tmp_path_factory.mktemp("firebase"),
        env={"FIREBASE_PROJECT_ID": PROJECT, "FIREBASE_JWKS_URL": jwks.url},
    ).start()
    yield server, jwks
    server.stop()
    jwks.server.shutdown()


def test_http_routes_take_the_apps_id_token(firebase_server: tuple[ServerProcess, Jwks]):
    server, jwks = firebase_server
    mine = httpx.get(f"{server.http}/v1/conversations", headers={"Authorization": f"Bearer {token(jwks.keys['k1'])}"})
    assert mine.status_code == 200 and mine.json() == []  # the app's bare list
    for bad, why in [
        (token(new_key()), "signature does not verify"),
        (token(jwks.keys["k1"], aud="another-project"), "another Firebase project"),
        (token(jwks.keys["k1"], exp=1_000_000_000), "expired"),
    ]:
        refused = httpx.get(f"{server.http}/v1/conversations", headers={"Authorization": f"Bearer {bad}"})
        assert refused.status_code == 401 and why in refused.json()["detail"]


async def test_the_device_websocket_takes_the_apps_id_token(firebase_server: tuple[ServerProcess, Jwks]):
    server, jwks = firebase_server
    query = "language=en&sample_rate=16000&codec=pcm16"
    good = {"Authorization": f"Bearer {token(jwks.keys['k1'])}"}
    async with websockets.connect(f"{server.ws}?{query}", additional_headers=good) as ws:
        first = json.loads(await ws.recv())
        assert first["type"] == "service_status"
    forged = {"Authorization": f"Bearer {token(new_key())}"}
    async with websockets.connect(f"{server.ws}?{query}", additional_headers=forged) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008 and "signature" in (ws.close_reason or "")
