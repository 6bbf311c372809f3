"""Asking the memory: `search` it, or `chat` with your agent."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import TYPE_CHECKING, Any

from app.settings import load_settings

if TYPE_CHECKING:
    pass

from app.cli.cli_support import Commands, Handler, msgspec_builtins, print_json, when

__all__ = ["HANDLERS", "add_parsers"]


def add_parsers(commands: Commands) -> None:
    """Add this group's commands."""
    search = commands.add_parser(
        "search",
        help="search a user's remembered turns (words and meaning)",
        description="Search a user's turns in the memory index: lexical (names, dates) and vector hits, fused.",
    )
    search.add_argument("query", metavar="QUERY")
    search.add_argument("--uid", required=True, help="whose memory to search")
    search.add_argument("--limit", type=int, default=10, help="hits to return (default: 10)")
    search.add_argument("--speaker", help="only turns of this speaker (any case)")
    search.add_argument("--conversation", metavar="ID", help="only turns of this conversation")
    search.add_argument("--since", type=when, metavar="WHEN", help="only turns ending at or after (ISO date/time)")
    search.add_argument("--until", type=when, metavar="WHEN", help="only turns starting at or before (ISO date/time)")
    search.add_argument("--json", action="store_true", help="print the hits as JSON to stdout")

    chat = commands.add_parser(
        "chat",
        help="ask your agent about your past conversations (a terminal chat)",
        description="Chat with your Letta agent through a running service's POST /v1/chat. The agent searches "
        "your memory with its tools; its answer streams in as it is written. Type a question per line; Ctrl-D "
        "or /quit leaves. Without a terminal, each line of standard input is one question.",
    )
    chat.add_argument("--url", help="the service (default: http://127.0.0.1:PORT)")
    who = chat.add_mutually_exclusive_group()
    who.add_argument(
        "--token", help="your API token (`omi-letta token create --uid U`); default: the OMI_LETTA_TOKEN variable"
    )
    who.add_argument(
        "--uid",
        help="chat as this user, as the operator of this machine: the token is ADMIN_KEY (from .env) and the uid",
    )
    chat.add_argument("-m", "--message", help="ask this one question, print the answer and exit")
    chat.add_argument("-v", "--verbose", action="store_true", help="also show the agent's reasoning and tool results")


def _search(args: argparse.Namespace) -> int:
    from core.conversation import iso
    from memory.search.hybrid import open_search

    settings = load_settings()
    if not args.query.strip():
        print("omi-letta search: the query is blank", file=sys.stderr)
        return 2

    async def run() -> list[dict[str, Any]]:
        search = open_search(
            settings.embeddings, settings.vector_index, settings.server.data_dir, settings.database_url
        )
        try:
            hits = await search.search(
                args.uid,
                args.query,
                limit=args.limit,
                speaker=args.speaker,
                conversation_id=args.conversation,
                since=args.since,
                until=args.until,
            )
        finally:
            await search.close()
        return [msgspec_builtins(h) for h in hits]

    hits = asyncio.run(run())
    if args.json:
        print_json(hits)
        return 0
    if not hits:
        print(f"nothing found for uid {args.uid}", file=sys.stderr)
    for h in hits:
        print(f"{h['score']:.4f}  {iso(h['start'])[:16]}  {h['speaker']}: {h['text']}  [{h['conversation_id'][:8]}]")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from app.cli.chat_client import ChatClientError, ask, printer, repl

    settings = load_settings(enforce_privacy=False)  # it only talks to the service
    if args.uid is not None:
        if not args.uid.strip():
            print("omi-letta chat: --uid is blank", file=sys.stderr)
            return 2
        if not settings.auth.admin_key:
            print("omi-letta chat: --uid needs ADMIN_KEY (in .env); or give --token", file=sys.stderr)
            return 2
        token = f"{settings.auth.admin_key}{args.uid}"
    else:
        token = args.token or os.environ.get("OMI_LETTA_TOKEN", "")
    if not token:
        print(
            "omi-letta chat: give --uid U, --token, or set OMI_LETTA_TOKEN (omi-letta token create --uid U)",
            file=sys.stderr,
        )
        return 2
    url = args.url or f"http://127.0.0.1:{settings.server.port}"
    if args.message is None:
        return repl(url, token, verbose=args.verbose)
    try:
        ask(url, token, args.message, printer(sys.stdout, verbose=args.verbose))
    except ChatClientError as exc:
        print(f"omi-letta chat: {exc}", file=sys.stderr)
        return 1
    return 0


HANDLERS: dict[str, Handler] = {
    "search": _search,
    "chat": _chat,
}
