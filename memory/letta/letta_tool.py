"""``search_memory_http``: the custom tool agents get where their Letta server cannot use our MCP server.

A Letta server refuses MCP servers on private or loopback addresses (a shared one must), so an
agent on such a server cannot reach ``/mcp``. This tool runs in the Letta server's own sandbox instead and calls
``GET /v1/memory/search`` with the user's API token; both come from the agent's secrets
``OMI_LETTA_URL`` and ``OMI_LETTA_TOKEN``. :data:`SOURCE` is the tool's whole source: Letta keeps it
as text and derives the tool's schema from its signature and docstring.
"""

from __future__ import annotations

__all__ = ["SECRET_TOKEN", "SECRET_URL", "SOURCE", "TOOL_NAME"]

TOOL_NAME = "search_memory_http"
SECRET_URL = "OMI_LETTA_URL"
SECRET_TOKEN = "OMI_LETTA_TOKEN"

SOURCE = '''
def search_memory_http(query: str, speaker: str = "", since: str = "", until: str = "", limit: int = 10) -> str:
    """Search the user's remembered conversations (everything they heard and said) by words and meaning.

    Args:
        query: What to look for, e.g. "where does Diane live" or "dentist appointment".
        speaker: Only turns said by this person (a name, or "me" for the user); empty for anyone.
        since: Only turns at or after this ISO date or date-time (UTC), e.g. 2025-10-28; empty for no limit.
        until: Only turns at or before this ISO date or date-time (UTC); empty for no limit.
        limit: How many turns to return, 1 to 50.

    Returns:
        str: One line per turn, best first: when (UTC), who, what they said, and the conversation id.
    """
    import json
    import os
    import urllib.error
    import urllib.parse
    import urllib.request
    from datetime import datetime, timezone

    params = {"q": query, "limit": max(1, min(int(limit), 50))}
    if speaker:
        params["speaker"] = speaker
    for name, text in (("since", since), ("until", until)):
        if text:
            try:
                when = datetime.fromisoformat(text)
            except ValueError:
                return name + " must be an ISO date such as 2025-10-28"
            params[name] = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    url = os.environ["OMI_LETTA_URL"].rstrip("/") + "/v1/memory/search?" + urllib.parse.urlencode(params)
    request = urllib.request.Request(url, headers={"Authorization": "Bearer " + os.environ["OMI_LETTA_TOKEN"]})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            hits = json.load(response)["items"]
    except urllib.error.HTTPError as exc:
        return "The memory search failed: HTTP " + str(exc.code)
    except OSError as exc:
        return "The memory search is unreachable: " + str(exc)
    if not hits:
        return "Nothing in memory matches " + repr(query) + "."
    lines = []
    for hit in hits:
        when = datetime.fromtimestamp(hit["start"], tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        lines.append("[" + when + "] " + hit["speaker"] + ": " + hit["text"].strip()
                     + " (conversation " + hit["conversation_id"] + ")")
    return "\\n".join(lines)
'''
