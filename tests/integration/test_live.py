"""``GET /v1/live`` on a real server: what the device's stream produces reaches that user's web pages only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli.simulator import simulate
from tests.support import ADMIN_KEY, ServerProcess, Turn, token


@dataclass
class LiveReader:
    """A client of ``/v1/live``: the events it received, as ``(event, data)``."""

    events: list[tuple[str, Any]] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    comments: int = 0

    def of(self, kind: str) -> list[Any]:
        return [data for event, data in self.events if event == kind]

    async def until(self, done: Callable[[], object], timeout_s: float) -> None:
        """Wait until ``done()`` is true of the events received."""
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(done)

    async def read(self, response: httpx.Response) -> None:
        name, data = "", []
        async for line in response.aiter_lines():
            if line.startswith(":"):
                self.comments += 1
            elif line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())
            elif not line and data:
                self.events.append((name or "message", json.loads("\n".join(data))))
                if name == "ready":
                    self.ready.set()
                async with self.changed:
                    self.changed.notify_all()
                name, data = "", []


@contextlib.asynccontextmanager
async def listening(server: ServerProcess, bearer: str) -> AsyncIterator[LiveReader]:
    """``/v1/live`` open as ``bearer`` until the block ends, once the server says it listens."""
    reader = LiveReader()
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30, read=None)) as http,
        http.stream("GET", f"{server.http}/v1/live", headers={"Authorization": f"Bearer {bearer}"}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        task = asyncio.create_task(reader.read(response))
        try:
            async with asyncio.timeout(10):
                await reader.ready.wait()
            yield reader
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_the_device_stream_reaches_the_users_pages_and_no_one_elses(
    server: ServerProcess, dialogue: tuple[Path, list[Turn]]
):
    async with listening(server, token("live-alice")) as page, listening(server, token("live-bob")) as stranger:
        device = await simulate(dialogue[0], server.ws, token=token("live-alice"), speed=3, settle_s=1.5)
        assert device.segments, server.log()

        def seen() -> dict[str, dict[str, Any]]:
            return {seg["id"]: seg for batch in page.of("segments") for seg in batch}

        await page.until(lambda: seen() == device.segments, timeout_s=5)
        assert "pharmacy" in " ".join(s["text"] for s in seen().values()).lower()

        conversation = server.get("/v1/conversations/page", uid="live-alice").json()["items"][0]
        server.post(f"/v1/conversations/{conversation['id']}/close", uid="live-alice")
        await page.until(lambda: any(e["type"] == "memory_created" for e in page.of("conversation")), timeout_s=30)
        created = next(e for e in page.of("conversation") if e["type"] == "memory_created")
        assert created["memory"]["id"] == conversation["id"]

        speaker = created["memory"]["transcript_segments"][0]["speaker_id"]
        relabelled = server.patch(
            f"/v1/conversations/{conversation['id']}/speakers",
            uid="live-alice",
            json={"speaker_id": speaker, "name": "Ada"},
        )
        assert relabelled.status_code == 200, relabelled.text

        def renamed() -> list[list[dict[str, Any]]]:
            return [batch for batch in page.of("relabel") if batch[0]["speaker_name"] == "Ada"]

        await page.until(renamed, timeout_s=10)
        assert {s["speaker_id"] for s in renamed()[0]} == {speaker}
    assert [event for event, _ in stranger.events] == ["ready"]
    log = server.log()
    assert not [s for s in device.segments.values() if s["text"] in log], "transcript text is never logged"


def api_token(server: ServerProcess, uid: str) -> str:
    """A new API token for ``uid``, made as a user would: ``omi-letta token create``."""
    made = subprocess.run(
        [sys.executable, "-m", "app", "token", "create", "--uid", uid],
        cwd=server.data_dir,
        env={**os.environ, "DATA_DIR": str(server.data_dir), "ADMIN_KEY": ADMIN_KEY},
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip()


async def test_an_api_token_works_and_a_wrong_one_gets_401(server: ServerProcess):
    async with listening(server, api_token(server, "live-carol")) as page:
        assert page.of("ready") == [{}]

    async with httpx.AsyncClient(timeout=10) as http:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer olt_made-up"}):
            refused = await http.get(f"{server.http}/v1/live", headers=headers)
            assert refused.status_code == 401 and refused.json()["detail"], headers


@pytest.mark.parametrize("path", ["/", "/web/app.js", "/web/style.css"])
def test_the_page_is_served_with_a_strict_policy(server: ServerProcess, path: str):
    response = httpx.get(f"{server.http}{path}", timeout=10)
    assert response.status_code == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{server.http}/web/__init__.py", timeout=10).status_code == 404
