"""The MCP server at /mcp, through the official `mcp` client over streamable HTTP, on a real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from app.cli.simulator import simulate
from tests.support import ServerProcess, Turn, token


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("mcp-server"), env={"OUTBOX_POLL_S": "0.2"}).start()
    yield proc
    proc.stop()


async def call(server: ServerProcess, bearer: str, tool: str, **args: Any) -> str:
    """One tool call as an MCP client makes it; the tool's text."""
    headers = {"Authorization": f"Bearer {bearer}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        Client(streamable_http_client(f"{server.http}/mcp", http_client=http)) as client,
    ):
        result = await client.call_tool(tool, args)
    assert not result.is_error, result
    return "\n".join(part.text for part in result.content if hasattr(part, "text"))


@pytest.fixture(scope="module")
async def remembered(mcp_server: ServerProcess, dialogue: tuple[Path, list[Turn]]) -> dict[str, Any]:
    """The espeak dialogue streamed in as user `mcp-alice`, closed and indexed."""
    await simulate(dialogue[0], mcp_server.ws, token=token("mcp-alice"), speed=2, settle_s=3)
    deadline = time.monotonic() + 60
    while not (items := mcp_server.get("/v1/conversations/page", uid="mcp-alice").json()["items"]):
        assert time.monotonic() < deadline, "the dialogue was not stored"
        await asyncio.sleep(0.5)
    conversation = mcp_server.post(f"/v1/conversations/{items[0]['id']}/close", uid="mcp-alice").json()
    while (
        mcp_server.metric("outbox_pending_index")
        or not mcp_server.get("/v1/memory/search", uid="mcp-alice", params={"q": "pharmacy"}).json()["items"]
    ):
        assert time.monotonic() < deadline, "the dialogue was not indexed"
        await asyncio.sleep(0.3)
    return dict(conversation)


async def test_the_tools_answer_in_words_a_model_reads(mcp_server: ServerProcess, remembered: dict[str, Any]):
    headers = {"Authorization": f"Bearer {token('mcp-alice')}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        Client(streamable_http_client(f"{mcp_server.http}/mcp", http_client=http)) as client,
    ):
        listed = await client.list_tools()
    assert {t.name for t in listed.tools} == {"search_memory", "get_conversation", "list_conversations", "who_said"}

    cid = remembered["id"]
    names = {s["speaker_name"] for s in remembered["transcript_segments"]}
    found = await call(mcp_server, token("mcp-alice"), "search_memory", query="pharmacy", limit=3)
    assert "pharmacy" in found.lower() and cid in found and "UTC]" in found
    assert any(f"] {n}: " in found for n in names), "turns are given by name"

    whole = await call(mcp_server, token("mcp-alice"), "get_conversation", id=cid)
    assert whole.startswith(f"Conversation {cid}")
    assert len([line for line in whole.splitlines() if line.startswith("[")]) == len(remembered["transcript_segments"])
    assert "clinic" in whole.lower()

    recent = await call(mcp_server, token("mcp-alice"), "list_conversations", since="2000-01-01")
    assert cid in recent and "turns) with " in recent
    assert "No conversations" in await call(mcp_server, token("mcp-alice"), "list_conversations", until="2000-01-01")

    said = await call(mcp_server, token("mcp-alice"), "who_said", text="remind me to call the pharmacy")
    assert " said it on " in said and "pharmacy" in said.lower() and said.split(" said it on ")[0] in names


async def test_every_call_is_scoped_to_the_tokens_user(mcp_server: ServerProcess, remembered: dict[str, Any]):
    cid = remembered["id"]
    assert "Nothing in memory" in await call(mcp_server, token("mcp-bob"), "search_memory", query="pharmacy")
    assert f"There is no conversation {cid}" in await call(mcp_server, token("mcp-bob"), "get_conversation", id=cid)
    assert "No conversations" in await call(mcp_server, token("mcp-bob"), "list_conversations")
    assert "No one in memory" in await call(mcp_server, token("mcp-bob"), "who_said", text="pharmacy")

    async with httpx2.AsyncClient(timeout=30) as http:
        for headers in ({}, {"Authorization": "Bearer olt_revoked-or-made-up"}, {"Authorization": "Bearer nope"}):
            refused = await http.post(f"{mcp_server.http}/mcp", json={"jsonrpc": "2.0"}, headers=headers)
            assert refused.status_code == 401 and refused.json()["detail"]


async def test_an_api_token_works_for_mcp(mcp_server: ServerProcess, remembered: dict[str, Any]):
    from memory.store.conversation_store import ConversationStore
    from memory.store.tokens import TokenStore

    store = await ConversationStore.open(f"sqlite+aiosqlite:///{(mcp_server.data_dir / 'omi-letta.db').resolve()}")
    try:
        api_token, _ = await TokenStore(store.engine).create("mcp-alice", "agent")
    finally:
        await store.close()
    found = await call(mcp_server, api_token, "search_memory", query="pharmacy", limit=1)
    assert remembered["id"] in found
