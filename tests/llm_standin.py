"""A scripted OpenAI-compatible chat model for tests: it calls ``search_memory``, then answers from the result.

It speaks the wire protocol Letta's OpenAI client uses (``GET /v1/models``, ``POST
/v1/chat/completions``, streamed or not) and follows one script: if the conversation has no tool
result yet and a ``search_memory`` tool is offered, it calls that tool with the user's last
message as the query; once that question has a tool result, it answers "From your memory: <result>".
Asked to understand a conversation (the system prompt starts with ``UNDERSTAND_MARKER``), it
answers :attr:`ScriptedLlm.understanding` as JSON, or, when that is a function, what it returns
for the request's last message.
Every request is kept in :attr:`ScriptedLlm.requests` for tests to inspect.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support import free_port

__all__ = ["ScriptedLlm"]

TOOL = "search_memory"
UNDERSTAND_MARKER = "omi-letta: understand a conversation"  # memory.understand.structure.MARKER


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


class ScriptedLlm:
    """The stand-in model server on 127.0.0.1; ``with ScriptedLlm() as llm: llm.base_url``."""

    def __init__(self, model: str = "scripted", api_key: str | None = None, delay_s: float = 0.3) -> None:
        self.model = model
        self.delay_s = delay_s
        self.api_key = api_key  # when set, requests without it are refused with 401
        self.port = free_port()
        self.requests: list[dict[str, Any]] = []
        self.refused = 0
        self.inflight = 0
        self.max_inflight = 0  # the most chat completions answered at once
        self.understanding: Any = {"title": "A conversation", "overview": "People talked.", "facts": []}
        self._count = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ScriptedLlm:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        """The next assistant message of the script, for a chat completions request ``body``."""
        messages = body.get("messages") or []
        if messages and _text(messages[0].get("content")).startswith(UNDERSTAND_MARKER):
            answer = self.understanding
            if callable(answer):
                answer = answer(_text(messages[-1].get("content")))
            return {"role": "assistant", "content": answer if isinstance(answer, str) else json.dumps(answer)}
        offered = {t.get("function", {}).get("name") for t in body.get("tools") or []}
        asked = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        results = [m for m in messages[asked + 1 :] if m.get("role") == "tool"]  # this question's
        if not results and TOOL in offered:
            question = _text(messages[asked].get("content")) if asked >= 0 else ""
            call = {
                "id": f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": TOOL, "arguments": json.dumps({"query": question.strip(), "limit": 5})},
            }
            return {"role": "assistant", "content": None, "tool_calls": [call]}
        found = _text(results[-1].get("content")) if results else "nothing: I have no memory tool"
        return {"role": "assistant", "content": f"From your memory: {found}"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        llm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _authorized(self) -> bool:
                if llm.api_key is None or self.headers.get("Authorization") == f"Bearer {llm.api_key}":
                    return True
                llm.refused += 1
                self._json(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
                return False

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                if self.path.rstrip("/").endswith("/models"):
                    model = {"id": llm.model, "object": "model", "created": 0, "owned_by": "tests"}
                    self._json(200, {"object": "list", "data": [model]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                if not self._authorized():
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": "not found"}})
                    return
                llm.requests.append(body)
                with llm._count:
                    llm.inflight += 1
                    llm.max_inflight = max(llm.max_inflight, llm.inflight)
                try:
                    time.sleep(llm.delay_s)  # as a model thinks: overlapping requests would show
                    self._answer(body)
                finally:
                    with llm._count:
                        llm.inflight -= 1

            def _answer(self, body: dict[str, Any]) -> None:
                message = llm.reply(body)
                finish = "tool_calls" if message.get("tool_calls") else "stop"
                usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
                base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "created": int(time.time()), "model": llm.model}
                if not body.get("stream"):
                    choice = {"index": 0, "message": message, "finish_reason": finish}
                    self._json(200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()

                def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> None:
                    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
                    event = {**base, "object": "chat.completion.chunk", "choices": [choice]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()

                chunk({"role": "assistant", "content": ""})
                if message.get("tool_calls"):
                    for i, call in enumerate(message["tool_calls"]):
                        chunk({"tool_calls": [{"index": i, **call}]})
                else:
                    words = message["content"].split(" ")
                    for i, word in enumerate(words):  # a few words at a time, as a model streams
                        chunk({"content": word + (" " if i < len(words) - 1 else "")})
                chunk({}, finish)
                if (body.get("stream_options") or {}).get("include_usage"):
                    event = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        return Handler
