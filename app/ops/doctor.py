"""``omi-letta doctor``: which data goes to which host under the current settings, and whether each backend answers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from app.privacy import Flow, flows, refusals

if TYPE_CHECKING:
    from app.settings import Settings

__all__ = ["Check", "agent_problems", "check_all", "report"]

TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    """How one backend answered: ``ok`` True, False (with why), or None when there is nothing to reach."""

    ok: bool | None
    detail: str


async def _http(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Check:
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            response = await client.request(method, url, headers=headers or {})
    except httpx.HTTPError as exc:
        return Check(False, f"unreachable ({type(exc).__name__})")
    if response.status_code in (401, 403):
        return Check(False, f"refused the credentials ({response.status_code})")
    if response.status_code >= 400:
        return Check(False, f"answered {response.status_code}")
    return Check(True, "reachable, authorized")


async def _reachable(url: str) -> Check:
    """Whether anything answers at ``url``; no alert is posted (any answer, 405 too, means it is there)."""
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            response = await client.head(url)
    except httpx.HTTPError as exc:
        return Check(False, f"unreachable ({type(exc).__name__})")
    return Check(True, f"reachable (answered {response.status_code}; no alert was sent)")


async def _database(url: str) -> Check:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with asyncio.timeout(TIMEOUT_S), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:  # every driver has its own errors; the kind is what helps here
        return Check(False, f"cannot connect ({type(exc).__name__})")
    finally:
        await engine.dispose()
    return Check(True, "connected")


async def _redis(url: str) -> Check:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S)
    try:
        await client.ping()
    except Exception as exc:  # connection, auth and TLS errors each have their own class
        return Check(False, f"cannot connect ({type(exc).__name__})")
    finally:
        await client.aclose()
    return Check(True, "connected")


async def _check(flow: Flow, settings: Settings) -> Check:
    """Reach the backend of ``flow`` with its credentials."""
    name = flow.backend
    if name.startswith("database"):
        if flow.url:
            return await _database(flow.url)
        data = settings.server.data_dir
        return Check(True, f"SQLite under {data}")
    if not flow.url:
        return Check(None, "on this machine" if not flow.off_machine else "through the Letta server")
    if name.startswith("speech-to-text: Deepgram"):
        from ingest.asr.deepgram import endpoints

        https, _ = endpoints(settings.asr.deepgram_url)
        return await _http(f"{https}/v1/projects", {"Authorization": f"Token {settings.asr.deepgram_api_key}"})
    if name.startswith("embeddings"):
        key = settings.embeddings.openai_api_key
        return await _http(f"{flow.url.rstrip('/')}/models", {"Authorization": f"Bearer {key}"})
    if name.startswith("vector index: pgvector"):
        return await _database(flow.url)
    if name.startswith("shared state: Redis"):
        return await _redis(flow.url)
    if name.startswith("alerts"):
        return await _reachable(flow.url)
    if name.startswith("vector index"):
        index = settings.vector_index
        headers = {"Api-Key": index.pinecone_api_key}
        if index.pinecone_host:
            return await _http(f"{flow.url.rstrip('/')}/describe_index_stats", headers, method="POST")
        return await _http(f"{flow.url.rstrip('/')}/indexes/{index.pinecone_index}", headers)
    if name.startswith("Letta"):
        health = await _http(f"{flow.url}/v1/health/")
        if not health.ok:
            hint = "" if settings.letta.base_url else "; `make run` starts a local one (omi-letta letta-local)"
            return Check(False, health.detail + hint)
        letta = settings.letta
        headers = {"Authorization": f"Bearer {letta.api_key}"} if letta.api_key else {}
        if letta.project_id:
            headers["X-Project-Id"] = letta.project_id
        return await _http(f"{flow.url}/v1/agents/?limit=1", headers)
    if name.startswith("agents' model"):
        llm = settings.llm
        headers = {"Authorization": f"Bearer {llm.api_key}"} if llm.api_key else {}
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
                response = await client.get(f"{flow.url.rstrip('/')}/models", headers=headers)
        except httpx.HTTPError as exc:
            return Check(False, f"unreachable ({type(exc).__name__}); start Ollama, or set LLM_BASE_URL")
        if response.status_code in (401, 403):
            return Check(False, f"refused LLM_API_KEY ({response.status_code})")
        if response.status_code >= 400:
            return Check(False, f"answered {response.status_code}")
        try:
            served = {m.get("id") for m in response.json().get("data", [])}
        except ValueError:
            served = set()
        if served and llm.model not in served and f"{llm.model}:latest" not in served:
            return Check(False, f"does not serve {llm.model} (it has: {', '.join(sorted(map(str, served))[:5])})")
        return Check(True, f"serves {llm.model}")
    return Check(None, "not checked")


async def check_all(settings: Settings) -> list[tuple[Flow, Check]]:
    """Every flow of ``settings`` with how its backend answered (checked at once)."""
    found = flows(settings)
    checks = await asyncio.gather(*(_check(f, settings) for f in found))
    return list(zip(found, checks, strict=True))


async def agent_problems(settings: Settings) -> list[str]:
    """Users with more than one Letta agent tagged ``omi-uid:<uid>``, each with how to merge them.

    Nothing when Letta delivery is off; one line saying why when Letta's agents cannot be listed.
    """
    from core.errors import DeliveryError
    from memory.letta.agent_merge import duplicates
    from memory.letta.letta_client import open_client

    if not settings.letta.delivery:
        return []
    client = open_client(settings.letta)
    try:
        async with asyncio.timeout(6 * TIMEOUT_S):
            found = await duplicates(client)
    except DeliveryError as exc:
        return [f"the Letta agents could not be listed to look for a user's duplicates: {exc.detail}"]
    except TimeoutError:
        return [f"the Letta agents could not be listed in {6 * TIMEOUT_S:.0f} s to look for a user's duplicates"]
    finally:
        await client.close()
    return [
        f"uid {uid} has {len(ids)} Letta agents tagged omi-uid:{uid} ({', '.join(ids)}); the service uses one of "
        f"them: merge the others into it with `omi-letta merge-agents --uid {uid}`"
        for uid, ids in found.items()
    ]


def report(
    settings: Settings, checked: list[tuple[Flow, Check]] | None, problems: list[str] | None = None
) -> tuple[str, bool]:
    """The doctor's text, and whether everything is in order (allowed by the privacy mode, answering, and
    free of ``problems`` such as duplicate agents)."""
    refused = refusals(settings)
    mode = settings.privacy.mode
    lines = [
        f"PRIVACY_MODE={mode}: "
        + ("nothing may leave this machine." if mode == "local" else "backends on other machines are allowed."),
        "",
    ]
    rows = checked if checked is not None else [(f, Check(None, "not checked")) for f in flows(settings)]
    width = max(len(f.backend) for f, _ in rows)
    data_width = max(len(f.data) for f, _ in rows)
    host_width = max(len(f.host) for f, _ in rows)
    lines.append(f"{'BACKEND':<{width}}  {'SENT':<{data_width}}  {'TO':<{host_width}}  CHECK")
    ok = True
    for flow, check in rows:
        mark = {True: "ok", False: "FAIL", None: "-"}[check.ok]
        if check.ok is False:
            ok = False
        lines.append(
            f"{flow.backend:<{width}}  {flow.data:<{data_width}}  {flow.host:<{host_width}}  {mark}: {check.detail}"
        )
    if mode == "local" and refused:
        ok = False
        lines += ["", "Refused by PRIVACY_MODE=local (set PRIVACY_MODE=cloud to allow, or use this machine):"]
        lines += [f"  - {r}" for r in refused]
    elif mode == "cloud":
        away = [f for f, _ in rows if f.off_machine and f.personal]
        lines += ["", f"{len(away)} backend(s) receive data on other machines." if away else "Everything stays here."]
    if problems:
        ok = False
        lines += ["", "Problems:"] + [f"  - {p}" for p in problems]
    return "\n".join(lines), ok
