"""Letta Cloud: the sink sends the API key and project id, on the paths of Letta's API (a local stand-in answers).

Letta Cloud cannot be reached from here, so a local HTTP server records each request and answers
as Letta does: enough to create an agent, register our MCP server, insert passages and update the
recent-conversations block.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from app.service.outbound import agent_registry
from app.settings import load_settings
from core.conversation import Conversation
from core.segments import TranscriptSegment
from memory.letta.agents import MCP_TOOLS
from memory.letta.letta_sink import LettaSink
from memory.letta.passage_groups import group_turns
from memory.store.conversation_store import ConversationStore
from tests.support import free_port

KEY = "sk-let-cloud-0001"
PROJECT = "proj-4711"


class CloudStandIn:
    """Records every request; answers like Letta for the calls the sink makes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CloudStandIn:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, method: str, path: str, body: Any) -> Any:
        if (method, path) == ("GET", "/v1/agents/"):
            return []
        if (method, path) == ("POST", "/v1/agents/"):
            return {"id": "agent-cloud-1", "name": body["name"], "tags": body["tags"]}
        if (method, path) == ("GET", "/v1/mcp-servers/"):
            return []
        if (method, path) == ("POST", "/v1/mcp-servers/"):
            return {"id": "mcp-1", "server_name": body["server_name"], **body["config"]}
        if (method, path) == ("GET", "/v1/mcp-servers/mcp-1/tools"):
            return [{"id": f"tool-{name}", "name": name} for name in MCP_TOOLS]
        if (method, path) == ("GET", "/v1/archives/"):
            return []
        if method == "POST" and path == "/v1/agents/agent-cloud-1/archival-memory":
            return [{"id": "passage-1", "text": body["text"], "tags": body["tags"]}]
        if method == "PATCH" and path == "/v1/agents/agent-cloud-1/core-memory/blocks/recent_conversations":
            return {"id": "block-1", "label": "recent_conversations", "value": body["value"]}
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw) if raw else None
                url = urlparse(self.path)
                stand_in.requests.append(
                    {
                        "method": self.command,
                        "path": url.path,
                        "query": parse_qs(url.query),
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
                answer = stand_in.answer(self.command, url.path, body)
                status = 200 if answer is not None else 404
                data = json.dumps(answer if answer is not None else {"detail": "not found"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def do_PATCH(self) -> None:
                self._serve()

        return Handler


@pytest.fixture
def cloud() -> Iterator[CloudStandIn]:
    server = CloudStandIn().start()
    yield server
    server.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ConversationStore]:
    opened = await ConversationStore.open(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", sinks=("letta",))
    yield opened
    await opened.close()


async def test_the_sink_speaks_to_letta_cloud_with_key_and_project(
    cloud: CloudStandIn, store: ConversationStore, tmp_path: Path
) -> None:
    settings = load_settings(
        {
            "PRIVACY_MODE": "cloud",
            "LETTA_BASE_URL": cloud.url,
            "LETTA_API_KEY": KEY,
            "LETTA_PROJECT_ID": PROJECT,
            "LETTA_SERVICE_URL": "https://omi.example.org",
            "DATA_DIR": str(tmp_path),
        },
        env_file=None,
    )

    async def embedding() -> tuple[str, int]:
        return "all-MiniLM-L6-v2", 384

    sink = LettaSink.from_settings(settings.letta, store, agent_registry(settings, store, embedding))
    uid = f"cloud-{uuid.uuid4().hex[:8]}"
    conversation = Conversation(
        id="conv-cloud",
        uid=uid,
        status="completed",
        source="omi",
        language="en",
        created_at=1.0,
        started_at=1_761_645_600.0,
        finished_at=1_761_645_660.0,
        last_speech_at=1_761_645_660.0,
        timeout_s=120,
        segments=[
            TranscriptSegment(text="I'm in New Jersey now.", speaker="SPEAKER_1", speaker_id=1, start=0.0, end=2.0)
        ],
    )
    try:
        agent = await sink.agents.agent_for(uid)
        await sink.archive.sync_many(agent, uid, {conversation.id: conversation})
        await sink.blocks.refresh_recent(agent, uid)
    finally:
        await sink.close()

    assert agent == "agent-cloud-1"
    for request in cloud.requests:
        assert request["headers"]["authorization"] == f"Bearer {KEY}", request["path"]
        assert request["headers"]["x-project-id"] == PROJECT, request["path"]
    calls = [(r["method"], r["path"]) for r in cloud.requests]
    assert calls.index(("POST", "/v1/mcp-servers/")) < calls.index(("POST", "/v1/agents/"))
    assert ("POST", "/v1/agents/agent-cloud-1/archival-memory") in calls
    assert ("PATCH", "/v1/agents/agent-cloud-1/core-memory/blocks/recent_conversations") in calls

    listed = next(r for r in cloud.requests if (r["method"], r["path"]) == ("GET", "/v1/agents/"))
    assert listed["query"]["tags"] == [f"omi-uid:{uid}"]
    registered = next(r for r in cloud.requests if (r["method"], r["path"]) == ("POST", "/v1/mcp-servers/"))
    assert registered["body"]["config"]["server_url"] == "https://omi.example.org/mcp"
    assert registered["body"]["config"]["auth_token"].startswith("Bearer {{ OMI_LETTA_TOKEN | olt_")
    created = next(r for r in cloud.requests if (r["method"], r["path"]) == ("POST", "/v1/agents/"))
    assert created["body"]["tool_ids"] == [f"tool-{name}" for name in MCP_TOOLS]
    assert created["body"]["secrets"]["OMI_LETTA_URL"] == "https://omi.example.org"
    assert created["body"]["secrets"]["OMI_LETTA_TOKEN"].startswith("olt_")
    inserted = next(r for r in cloud.requests if r["path"].endswith("/archival-memory"))
    [group] = group_turns(conversation, settings.letta.passage_max_chars)
    assert inserted["body"]["text"] == group.text and f"grp:{group.key}" in inserted["body"]["tags"]
