"""The whole loop: audio in, then a question to the user's agent, answered through our MCP server.

The real local Letta server runs the agent; a scripted OpenAI-compatible model (tests/llm_standin.py)
stands in for the language model. It calls ``search_memory``, which Letta runs through this
service's MCP server at ``/mcp``, and answers with what the tool returned.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli.simulator import simulate
from app.ops.letta_local import LocalLetta
from tests.integration.test_delivery import SAMPLE, conversations, serve, wait_drained
from tests.llm_standin import ScriptedLlm
from tests.support import ServerProcess, chat_events, token

KEY = "sk-standin-0001"


async def chat(server: ServerProcess, uid: str, message: str) -> list[tuple[str, dict[str, Any]]]:
    """POST /v1/chat as ``uid`` and read the whole event stream."""
    return await chat_events(server.http, token(uid), message)


async def test_asked_where_diane_is_from_the_agent_searches_through_our_mcp_server(
    tmp_path: Path, letta: LocalLetta
) -> None:
    if not SAMPLE.is_file():
        pytest.skip(f"shared audio is absent ({SAMPLE}); it exists only on the project's machines")
    with ScriptedLlm(api_key=KEY) as llm:
        server = serve(tmp_path, letta, LLM_BASE_URL=llm.base_url, LLM_MODEL=llm.model, LLM_API_KEY=KEY)
        uid = f"chat-{uuid.uuid4().hex[:8]}"
        try:
            await simulate(SAMPLE, server.ws, token=token(uid), speed=2, settle_s=4)
            [listed] = conversations(server, uid)
            server.post(f"/v1/conversations/{listed['id']}/close", uid=uid)
            wait_drained(server)

            events = await chat(server, uid, "Where is Diane from?")
            kinds = [e for e, _ in events]
            calls = [d for e, d in events if e == "tool_call"]
            returns = [d for e, d in events if e == "tool_return"]
            answer = "".join(d["text"] for e, d in events if e == "assistant")
            assert calls and calls[0]["name"] == "search_memory", kinds
            assert "Diane" in json.loads(calls[0]["arguments"])["query"]
            assert returns and "New Jersey" in returns[0]["text"], returns
            assert "New Jersey" in answer, answer
            assert kinds[-1] == "done" and kinds.index("tool_call") < kinds.index("assistant")
            assert server.metric("mcp_calls_search_memory_total") >= 1, "the tool call went through our MCP server"

            agents = [r for r in llm.requests if r.get("tools")]  # the other asked to understand the conversation
            offered = {t["function"]["name"] for t in agents[0]["tools"]}
            assert {"search_memory", "get_conversation", "list_conversations", "who_said"} <= offered
            assert llm.refused == 0, "Letta sent the model our LLM_API_KEY"

            # Two messages at once: Letta gets them one after the other.
            before = len(llm.requests)
            both = await asyncio.gather(chat(server, uid, "Where is Diane from?"), chat(server, uid, "Who is Diane?"))
            assert all(any(e == "assistant" for e, _ in b) for b in both)
            assert len(llm.requests) - before == 4 and llm.max_inflight == 1

            # The terminal chat on the same API: one question per line of standard input.
            repl = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "app", "chat", "--url", server.http, "--token", token(uid)],
                input="Where is Diane from?\nWho lives in New Jersey?\n",
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert repl.returncode == 0, repl.stderr
            assert repl.stdout.count("[search_memory: ") == 2 and "New Jersey" in repl.stdout, repl.stdout
        finally:
            server.stop()


async def test_chat_says_why_when_the_model_is_unreachable(tmp_path: Path, letta: LocalLetta) -> None:
    server = serve(tmp_path, letta, LLM_BASE_URL="http://127.0.0.1:9/v1", LLM_MODEL="nothing-here")
    try:
        events = await chat(server, f"chat-{uuid.uuid4().hex[:8]}", "hello?")
        errors = [d["detail"] for e, d in events if e == "error"]
        assert errors and not any(e == "assistant" for e, _ in events), events
        assert "model" in errors[0] and "http://127.0.0.1:9/v1" in errors[0], errors
    finally:
        server.stop()


def test_chat_without_letta_is_503_with_the_reason(server: ServerProcess) -> None:
    response = server.post("/v1/chat", uid="no-letta", json={"message": "hi"})
    assert response.status_code == 503
    assert "LETTA_DELIVERY" in response.json()["detail"]
    assert server.post("/v1/chat", uid="no-letta", json={"message": ""}).status_code == 400
    assert httpx.post(f"{server.http}/v1/chat", json={"message": "hi"}).status_code == 401


def test_the_terminal_chat_as_a_uid_uses_admin_key_from_env(server: ServerProcess, tmp_path: Path) -> None:
    """``omi-letta chat --uid U``, like ``search --uid``: the operator needs no token of the user's."""
    from tests.support import ADMIN_KEY

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if k not in ("ADMIN_KEY", "OMI_LETTA_TOKEN")}
        return subprocess.run(
            [sys.executable, "-m", "app", "chat", "--url", server.http, *args],
            cwd=tmp_path,
            env=clean,
            capture_output=True,
            text=True,
            timeout=60,
        )

    no_key = run("--uid", "no-letta", "-m", "hi")
    assert no_key.returncode == 2 and "ADMIN_KEY" in no_key.stderr
    (tmp_path / ".env").write_text(f"ADMIN_KEY={ADMIN_KEY}\n")
    asked = run("--uid", "no-letta", "-m", "hi")
    assert asked.returncode == 1, asked.stderr
    assert "answered 503" in asked.stderr and "LETTA_DELIVERY" in asked.stderr, "authorized as the uid (not 401)"
    assert run("--uid", "x", "--token", "t", "-m", "hi").returncode == 2, "--uid or --token, not both"
