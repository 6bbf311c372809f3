"""``omi-letta chat``: a terminal conversation with your agent, over the service's ``POST /v1/chat``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import httpx

__all__ = ["ChatClientError", "ask", "repl"]

PROMPT = "you> "
HELP = "Ask about your past conversations. Ctrl-D or /quit leaves."


class ChatClientError(Exception):
    """The service refused the message or could not be reached; the message says why."""


def _events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    name = "message"
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            yield name, json.loads(line[5:])
        elif not line:
            name = "message"


def ask(url: str, token: str, message: str, show: Callable[[str, dict[str, Any]], None]) -> str:
    """Send ``message`` to the agent at service ``url``, calling ``show`` per event; returns the answer.

    Raises:
        ChatClientError: the service answered with an error, or the agent's reply failed.
    """
    headers = {"Authorization": f"Bearer {token}"}
    answer: list[str] = []
    try:
        with httpx.stream(
            "POST", f"{url.rstrip('/')}/v1/chat", json={"message": message}, headers=headers, timeout=None
        ) as response:
            if response.status_code != 200:
                response.read()
                try:
                    detail = response.json().get("detail", response.text)
                except ValueError:
                    detail = response.text
                raise ChatClientError(f"the service answered {response.status_code}: {detail}")
            for name, data in _events(response):
                show(name, data)
                if name == "assistant":
                    answer.append(data.get("text", ""))
                elif name == "error":
                    raise ChatClientError(data.get("detail", "the agent failed"))
    except httpx.HTTPError as exc:
        raise ChatClientError(f"cannot reach the service at {url}: {exc}") from exc
    return "".join(answer)


def printer(out: TextIO, *, verbose: bool = False) -> Callable[[str, dict[str, Any]], None]:
    """An event display for a terminal: the answer as it streams, tool calls on their own lines."""

    def show(name: str, data: dict[str, Any]) -> None:
        if name == "assistant":
            out.write(data.get("text", ""))
        elif name == "tool_call":
            try:
                args = json.loads(data.get("arguments") or "{}")
            except ValueError:
                args = {}
            what = args.get("query") or args.get("text") or args.get("id") or ""
            out.write(f"[{data.get('name')}{': ' + str(what) if what else ''}]\n")
        elif name == "reasoning" and verbose:
            out.write(f"(thinking: {data.get('text', '')})\n")
        elif name == "tool_return" and verbose:
            out.write(f"(tool returned: {data.get('text', '')[:300]})\n")
        elif name == "done":
            out.write("\n")
        out.flush()

    return show


def repl(url: str, token: str, *, inp: TextIO = sys.stdin, out: TextIO = sys.stdout, verbose: bool = False) -> int:
    """Read questions line by line until end of input; print each streamed answer. Returns an exit status."""
    interactive = inp.isatty()
    if interactive:
        out.write(f"{HELP}\n")
    show = printer(out, verbose=verbose)
    status = 0
    while True:
        if interactive:
            out.write(PROMPT)
            out.flush()
        line = inp.readline()
        if not line or line.strip() in ("/quit", "/exit"):
            return status
        if not line.strip():
            continue
        if interactive:
            out.write("agent> ")
        try:
            ask(url, token, line.strip(), show)
        except ChatClientError as exc:
            print(f"omi-letta chat: {exc}", file=sys.stderr)
            status = 1
