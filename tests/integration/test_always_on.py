"""Issue "Always on": scheduled backups while serving, and an alert for each problem, firing and clearing.

Two real servers. One writes a backup every 2 s (``BACKUP_EVERY``), keeps two, and one of its
archives is restored into an empty DATA_DIR with ``omi-letta restore``. The other delivers to the
real local Letta server through a relay the tests open and close, and posts its alerts to a tiny
HTTP receiver in the test (one JSON POST when a problem starts, one when it clears). Each problem
is caused for real: Letta away, deliveries held up behind it, a dead letter (an agent that does not
exist), the disk filled past ``ALERT_DISK_FREE_MB``, speech streamed faster than it can be
transcribed, a device gone quiet, and a backup folder that cannot be written.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
import websockets

from app.cli.simulator import encode_frames
from app.ops.letta_local import LocalLetta
from tests.conftest import FAST
from tests.integration.test_backup import cli, conversation, stored
from tests.integration.test_delivery import LONG_DIALOGUE
from tests.integration.test_webhooks import MEMORY, api_token, hook_url
from tests.support import AlertReceiver, ServerProcess, TcpBalancer, synthesize, token

CHECK_S = 0.5
BOGUS_AGENT = "agent-00000000-0000-4000-8000-000000000000"
# Words of what is posted and streamed: none may be in an alert.
SAID = ("errand", "pharmacy", "clinic", "prescription", "cardiologist", "timeline", "launches")


def fired_and_cleared(receiver: AlertReceiver, key: str) -> dict[str, Any]:
    """Exactly one alert when the problem started, and one when it cleared, in that order."""
    receiver.wait(key, "resolved")
    time.sleep(3 * CHECK_S)  # a second alert would have come by now
    bodies = receiver.of(key)
    assert [b["status"] for b in bodies] == ["firing", "resolved"], bodies
    firing, resolved = bodies
    for body in bodies:  # ntfy's JSON publishing fields, and the generic ones
        assert body["topic"] == "omi-test-alerts" and body["_auth"] == "Bearer alert-secret"
        assert body["title"].startswith("omi-letta: ") and body["message"] and body["text"]
        assert body["service"] == "omi-letta" and body["since"] == firing["since"]
        assert not [w for w in SAID if w in json.dumps(body).lower()], "no transcript text in an alert"
    assert firing["tags"] == ["warning"] and firing["priority"] == 4
    assert resolved["tags"] == ["white_check_mark"] and resolved["title"] == f"omi-letta: resolved: {firing['problem']}"
    return firing


def health_check(server: ServerProcess, name: str) -> dict[str, Any]:
    return dict(httpx.get(f"{server.http}/health", timeout=10).json()["checks"][name])


def until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return found


@pytest.fixture(scope="module")
def receiver() -> Iterator[AlertReceiver]:
    found = AlertReceiver().start()
    yield found
    found.stop()


ALERTS = {
    "ALERT_CHECK_INTERVAL_S": str(CHECK_S),
    "ALERT_TOPIC": "omi-test-alerts",
    "ALERT_WEBHOOK_TOKEN": "alert-secret",
}

# --- scheduled backups -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backing_up(tmp_path_factory: pytest.TempPathFactory, receiver: AlertReceiver) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("scheduled")
    env = {**ALERTS, "ALERT_WEBHOOK_URL": receiver.url, "BACKUP_EVERY": "2s", "BACKUP_KEEP": "2"}
    env["BACKUP_DIR"] = str(root / "backups")
    server = ServerProcess(root / "data", env=env).start()
    key = api_token(server, "backup-ann")
    for n in range(3):
        reply = httpx.post(hook_url(server, "memory-created", key, "uid=backup-ann"), json=conversation(n), timeout=60)
        assert reply.status_code == 200, reply.text
    yield server
    server.stop()


def archives(folder: Path) -> list[Path]:
    return sorted(folder.glob("omi-letta-backup-*.tar.gz"))


def test_scheduled_backups_rotate_and_the_newest_restores_into_an_empty_data_dir(
    backing_up: ServerProcess, tmp_path: Path
):
    folder = Path(backing_up.env["BACKUP_DIR"])
    seen: set[str] = set()

    def rotated() -> bool:
        found = archives(folder)
        seen.update(p.name for p in found)
        return len(seen) >= 4 and len(found) <= 2

    until(rotated, 90, "four backups written, two kept")
    assert len(archives(folder)) == 2, "BACKUP_KEEP=2: the older ones were deleted"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700, "the archives hold the key: a private folder"
    assert health_check(backing_up, "backup")["ok"]

    copy_of = tmp_path / "newest.tar.gz"
    until(lambda: shutil.copyfile(archives(folder)[-1], copy_of), 10, "the newest archive copied")
    assert stat.S_IMODE(archives(folder)[-1].stat().st_mode) == 0o600
    restored_dir = tmp_path / "restored" / "data"
    done = cli(restored_dir, "restore", str(copy_of))
    assert done.returncode == 0, done.stderr
    before = stored(backing_up, "backup-ann")
    restored = ServerProcess(restored_dir).start()
    try:
        assert stored(restored, "backup-ann") == before, "every conversation, as it was stored"
    finally:
        restored.stop()


def test_a_backup_that_cannot_be_written_alerts_until_one_is_written_again(
    backing_up: ServerProcess, receiver: AlertReceiver, tmp_path: Path
):
    folder = Path(backing_up.env["BACKUP_DIR"])
    aside = tmp_path / "aside"
    folder.rename(aside)
    folder.write_text("not a folder")  # unwritable even for root
    try:
        firing = receiver.wait("backup", "firing")
        assert firing["problem"] == "The scheduled backup failed" and str(folder) in firing["detail"]
        assert not health_check(backing_up, "backup")["ok"]
    finally:
        folder.unlink()
        aside.rename(folder)
    fired_and_cleared(receiver, "backup")
    assert health_check(backing_up, "backup")["ok"]


# --- alerts ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay(letta: LocalLetta) -> Iterator[TcpBalancer]:
    """Letta as the alerting server reaches it: away (no backend) until a test lets it through."""
    found = TcpBalancer([]).start()
    yield found
    found.stop()


@pytest.fixture(scope="module")
def disk_margin() -> int:
    return 1 << 30


@pytest.fixture(scope="module")
def alerting(
    tmp_path_factory: pytest.TempPathFactory, receiver: AlertReceiver, relay: TcpBalancer, disk_margin: int
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("alerting")
    free_mb = shutil.disk_usage(root).free / 2**20
    env = {
        **FAST,
        **ALERTS,
        "ALERT_WEBHOOK_URL": receiver.url,
        "ALERT_BACKLOG_AGE_S": "2",
        "ALERT_DISK_FREE_MB": f"{free_mb - disk_margin / 2**20:.0f}",  # a gigabyte below what is free now
        "ALERT_SILENCE_H": "0.002",  # 7.2 s
        "MAX_QUEUED_AUDIO_S": "1",
        "LETTA_DELIVERY": "true",
        "LETTA_BASE_URL": relay.http,
        "LETTA_AGENT_ID": f"dead-{uuid.uuid4().hex[:6]}={BOGUS_AGENT}",
        "LETTA_TIMEOUT_S": "4",
        "OUTBOX_BASE_DELAY_S": "0.2",
        "OUTBOX_MAX_DELAY_S": "1",
        "OUTBOX_MAX_ATTEMPTS": "1",  # Letta being away never makes a dead letter; a missing agent does at once
        "OUTBOX_POLL_S": "0.2",
    }
    server = ServerProcess(root / "data", env=env).start()
    yield server
    server.stop()


def post_memory(server: ServerProcess, uid: str) -> None:
    memory = copy.deepcopy(MEMORY)
    memory["id"] = str(uuid.uuid4())
    for segment in memory["transcript_segments"]:
        segment["id"] = str(uuid.uuid4())
    url = hook_url(server, "memory-created", api_token(server, uid), f"uid={uid}")
    reply = httpx.post(url, json=memory, timeout=60)
    assert reply.status_code == 200, reply.text


def test_letta_away_and_the_backlog_behind_it_alert_and_clear(
    alerting: ServerProcess, receiver: AlertReceiver, relay: TcpBalancer, letta: LocalLetta
):
    firing = receiver.wait("letta", "firing")
    assert firing["problem"] == "Letta is unreachable" and relay.http in firing["detail"]
    post_memory(alerting, f"ann-{uuid.uuid4().hex[:6]}")
    backlog = receiver.wait("delivery_backlog", "firing")
    assert "waiting for letta" in backlog["detail"]
    assert not health_check(alerting, "delivery_backlog")["ok"]

    relay.ports = [letta.port]  # Letta is back
    assert fired_and_cleared(receiver, "letta")
    assert fired_and_cleared(receiver, "delivery_backlog")
    health = httpx.get(f"{alerting.http}/health", timeout=10).json()
    assert health["status"] == "ok" and health["checks"]["letta"]["ok"] and health["checks"]["delivery_backlog"]["ok"]


def test_a_dead_letter_alerts_until_it_is_purged(
    alerting: ServerProcess, receiver: AlertReceiver, relay: TcpBalancer, letta: LocalLetta
):
    relay.ports = [letta.port]  # Letta answers: while it is away, nothing becomes a dead letter
    uid = alerting.env["LETTA_AGENT_ID"].split("=")[0]  # its configured agent does not exist
    post_memory(alerting, uid)
    firing = receiver.wait("dead_letters", "firing")
    assert "letta" in firing["detail"] and "omi-letta outbox list" in firing["detail"]
    purged = cli(alerting.data_dir, "outbox", "purge", "--all")
    assert purged.returncode == 0, purged.stderr
    fired_and_cleared(receiver, "dead_letters")


def test_a_filling_disk_alerts_and_clears_when_space_is_freed(
    alerting: ServerProcess, receiver: AlertReceiver, disk_margin: int
):
    filler = alerting.data_dir / "filler.bin"
    with filler.open("wb") as f:
        os.posix_fallocate(f.fileno(), 0, 2 * disk_margin)  # the blocks are taken, not only promised
    try:
        firing = receiver.wait("disk", "firing")
        assert "free on the disk of DATA_DIR" in firing["detail"]
    finally:
        filler.unlink()
    fired_and_cleared(receiver, "disk")


async def send_audio(server: ServerProcess, uid: str, audio: np.ndarray, *, speed: float) -> None:
    packets, period = encode_frames(audio, "opus_fs320")
    url = f"{server.ws}?codec=opus_fs320&sample_rate=16000&language=en"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token(uid)}"}) as ws:
        for packet in packets:
            await ws.send(packet)
            if speed:
                await asyncio.sleep(period / speed)
        await asyncio.sleep(2.0)


async def test_speech_faster_than_it_can_be_transcribed_alerts_and_clears(
    alerting: ServerProcess, receiver: AlertReceiver, tmp_path: Path
):
    wav, _ = synthesize(LONG_DIALOGUE * 2, tmp_path / "long.wav", gap_s=0.6)
    audio, _ = soundfile.read(wav, dtype="float32")
    await send_audio(alerting, f"fast-{uuid.uuid4().hex[:6]}", audio, speed=0)  # all at once
    firing = await asyncio.to_thread(receiver.wait, "speech_to_text", "firing")
    assert firing["problem"] == "Speech-to-text is falling behind real time" and "dropped" in firing["detail"]
    await asyncio.to_thread(fired_and_cleared, receiver, "speech_to_text")  # the next check found no new drop


async def test_a_device_that_goes_quiet_alerts_and_clears_when_it_streams_again(
    alerting: ServerProcess, receiver: AlertReceiver
):
    uid = f"quiet-{uuid.uuid4().hex[:6]}"
    silence = np.zeros(16_000, np.float32)  # a second of a quiet room: audio, no speech
    await send_audio(alerting, uid, silence, speed=1)
    firing = await asyncio.to_thread(receiver.wait, f"device_silence:{uid}", "firing", 60)
    assert firing["problem"] == f"No audio from {uid}'s device" and "ALERT_SILENCE_H=0.002" in firing["detail"]
    assert not health_check(alerting, "device_silence")["ok"]
    await send_audio(alerting, uid, silence, speed=1)
    await asyncio.to_thread(fired_and_cleared, receiver, f"device_silence:{uid}")
