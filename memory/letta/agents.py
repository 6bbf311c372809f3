"""Each user's Letta agent, found, adopted or created with this service's memory tools.

One :class:`AgentRegistry` serves the sink (which writes the agent's memory) and chat (which
messages the agent): they find the same agent, and share its locks.

An agent is created only under the user's claim in the database
(:mod:`memory.letta.agent_claims`), and only after Letta was asked once more whether another
worker created it meanwhile: several workers, however many, create one agent per user. Where
several agents carry a user's tag anyway (made by an older version, or a create whose reply was
lost and that was tried again), every worker uses the same one: the one the claim names, else the
oldest; ``omi-letta doctor`` reports them and ``omi-letta merge-agents`` merges them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from letta_client import AsyncLetta

from core.errors import DeliveryError
from memory.letta.agent_claims import owner_gone
from memory.letta.letta_client import letta_errors, open_client, unsent
from memory.letta.letta_tool import SECRET_TOKEN, SECRET_URL, SOURCE
from memory.letta.passage_groups import recent_block
from memory.store.crypto import installed
from memory.store.tokens import PREFIX, TokenStore

if TYPE_CHECKING:
    from memory.letta.agent_claims import AgentClaim, AgentClaims
    from memory.memory_settings import LettaSettings, LlmSettings

__all__ = [
    "AGENT_TOKEN_NAME",
    "MCP_SERVER_NAME",
    "MCP_TOOLS",
    "RECENT_BLOCK",
    "RECENT_BLOCK_CHARS",
    "TOOLS_UID",
    "UID_TAG",
    "AgentRegistry",
    "AgentSpec",
    "EmbeddingSpec",
    "choose_agent",
    "uid_tag",
]

log = logging.getLogger(__name__)

RECENT_BLOCK = "recent_conversations"
RECENT_BLOCK_CHARS = 6000
MCP_SERVER_NAME = "omi-letta"
LLM_PROVIDER = "omi-letta-llm"
MCP_TOOLS = ("search_memory", "get_conversation", "list_conversations", "who_said")
TOOLS_UID = "omi-letta:letta-tools"  # a user with no memory: Letta lists our MCP tools as them
AGENT_TOKEN_NAME = "Letta agent (memory tools)"  # the name of the API token an agent's memory tools use
EmbeddingSpec = Callable[[], Awaitable[tuple[str, int]]]
"""Returns the name and dimension of the embedding model behind this service's ``/v1/embeddings``."""
TAGGED_LISTED = 20  # agents of one user looked at: more than one is already a duplicate
CLAIM_POLL_S = 0.25  # how often a worker waiting for another's agent looks at the claim


UID_TAG = "omi-uid:"


def uid_tag(uid: str) -> str:
    """The tag of ``uid``'s agent."""
    return f"{UID_TAG}{uid}"


def choose_agent(found: list[Any], claim: AgentClaim | None) -> Any:
    """Of several agents tagged for one user, the one every worker uses: the claimed one, else the oldest."""
    claimed = [a for a in found if claim is not None and a.id == claim.agent_id]
    if claimed:
        return claimed[0]
    latest = datetime.max.replace(tzinfo=UTC)
    return min(found, key=lambda a: (a.created_at or latest, a.id))


class AgentSpec:
    """What an agent we create looks like: model, embedding, memory blocks and tools, from the settings."""

    def __init__(self, letta: LettaSettings, llm: LlmSettings, service_url: str, embedding: EmbeddingSpec) -> None:
        self.model = letta.model
        self.llm = llm
        self.embedding = letta.embedding
        self.service_url = service_url
        self.endpoint = f"{service_url}/v1"
        self._embedding_spec = embedding

    def llm_config(self) -> dict[str, Any]:
        """The agents' model: LLM_MODEL at the OpenAI-compatible LLM_BASE_URL.

        With LLM_API_KEY the key is kept by Letta as a provider of its own (:data:`LLM_PROVIDER`),
        since the server's own OpenAI key is the one it embeds with.
        """
        config: dict[str, Any] = {
            "model": self.llm.model,
            "model_endpoint_type": "openai",
            "model_endpoint": self.llm.base_url.rstrip("/"),
            "context_window": self.llm.context_window,
        }
        if self.llm.api_key:
            config.update(provider_name=LLM_PROVIDER, provider_category="byok")
        return config

    async def create_args(self, uid: str) -> dict[str, Any]:
        """Keyword arguments of ``agents.create`` for ``uid``'s agent."""
        args: dict[str, Any] = {
            "name": f"omi-{uid}",
            "description": f"Memory of the conversations heard by OMI user {uid}.",
            "tags": ["omi", uid_tag(uid)],
            "tools": ["archival_memory_search"],
            "memory_blocks": [
                {
                    "label": "human",
                    "value": "The wearer of an OMI device. In transcripts the wearer is `me`; others go by their "
                    "name, or `Speaker n` while unknown.",
                },
                {
                    "label": "persona",
                    "value": "I remember what the wearer heard and said. Their conversations are in my archival "
                    "memory, one passage per stretch of turns, tagged omi, conv:<id> and speaker:<name>.",
                },
                {"label": RECENT_BLOCK, "value": recent_block([], RECENT_BLOCK_CHARS), "limit": RECENT_BLOCK_CHARS},
            ],
        }
        if self.model:
            args["model"] = self.model
        else:
            args["llm_config"] = self.llm_config()
        if self.embedding:
            args["embedding"] = self.embedding
        else:
            name, dim = await self._embedding_spec()
            args["embedding_config"] = {
                "embedding_endpoint_type": "openai",
                "embedding_endpoint": self.endpoint,
                "embedding_model": name,
                "embedding_dim": dim,
                "embedding_chunk_size": 300,
            }
        return args


class AgentRegistry:
    """The agent of every user (see the module docstring), and the locks that keep their writes and messages apart."""

    def __init__(
        self,
        client: AsyncLetta,
        spec: AgentSpec,
        tokens: TokenStore,
        *,
        agents: dict[str, str] | None = None,
        memory_tools: str = "mcp",
        claims: AgentClaims | None = None,
        claim_wait_s: float = 60.0,
        claim_stale_s: float = 300.0,
    ) -> None:
        self.client = client
        self.spec = spec
        self.memory_tools = memory_tools  # mcp | http | none: see LETTA_MEMORY_TOOLS
        self.claims = claims  # None: this process alone creates agents (tests of one registry)
        self.claim_wait_s = claim_wait_s  # how long to wait for another worker's agent before retrying later
        self.claim_stale_s = claim_stale_s  # a claim with no agent this old is taken over
        self._tokens = tokens
        self._configured = dict(agents or {})
        self._agents: dict[str, str] = {}
        self._tool_ids: list[str] | None = None
        self._tools_lock = asyncio.Lock()
        self._provider_ready = False
        self._uid_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._write_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # passages and blocks
        self._message_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # messages (runs)

    @classmethod
    def from_settings(
        cls,
        letta: LettaSettings,
        llm: LlmSettings,
        *,
        service_url: str,
        tokens: TokenStore,
        embedding: EmbeddingSpec,
        claims: AgentClaims | None = None,
    ) -> AgentRegistry:
        """The registry of the configured Letta server (LETTA_BASE_URL, else the local one)."""
        return cls(
            open_client(letta),
            AgentSpec(letta, llm, service_url, embedding),
            tokens,
            agents=letta.agents(),
            memory_tools=letta.memory_tools,
            claims=claims,
            claim_wait_s=max(60.0, 2 * letta.timeout_s),
            claim_stale_s=max(300.0, 10 * letta.timeout_s),
        )

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.client.close()

    def write_lock(self, agent: str) -> asyncio.Lock:
        """Held while the agent's passages or memory blocks are written: one writer per agent."""
        return self._write_locks[agent]

    async def agent_for(self, uid: str) -> str:
        """The agent of ``uid``: the configured one, else the one tagged ``omi-uid:<uid>``, else a new one.

        An agent we create or adopt gets the memory's tools: those of our MCP server, or the
        ``search_memory_http`` custom tool where the Letta server refuses it (``LETTA_MEMORY_TOOLS``).

        Raises:
            DeliveryError: Letta failed, or (transient) another worker is still creating the agent.
        """
        if uid in self._agents:
            return self._agents[uid]
        async with self._uid_locks[uid]:
            if uid in self._agents:
                return self._agents[uid]
            configured = self._configured.get(uid) or self._configured.get("*")
            if configured is not None:
                async with letta_errors("finding the configured agent"):
                    state, created = await self.client.agents.retrieve(configured, include=["agent.tools"]), False
            else:
                found = await self.tagged(uid)
                state, created = (await self._choose(uid, found), False) if found else await self._create_claimed(uid)
            agent = str(state.id)
            if not created:
                tools = await self.memory_tool_ids()
                if not set(tools) <= {t.id for t in state.tools or []}:
                    await self._give_memory_tools(agent, uid, tools)
            self._agents[uid] = agent
            return agent

    def forget(self, uid: str) -> None:
        """Find ``uid``'s agent again next time (Letta no longer has the one we knew: deleted or merged)."""
        self._agents.pop(uid, None)

    async def tagged(self, uid: str) -> list[Any]:
        """The agents Letta lists with ``uid``'s tag (with their tools)."""
        async with letta_errors("listing agents"):
            page = await self.client.agents.list(
                tags=[uid_tag(uid)], match_all_tags=True, limit=TAGGED_LISTED, include=["agent.tools"]
            )
        return list(page.items)

    async def _choose(self, uid: str, found: list[Any]) -> Any:
        """The agent of ``uid`` among those tagged, kept in the claims so that every worker picks it."""
        claim = await self.claims.get(uid) if self.claims is not None else None
        chosen = choose_agent(found, claim)
        if len(found) > 1:
            log.warning(
                "uid %s has %d Letta agents tagged %s; using %s (`omi-letta merge-agents --uid %s` merges them)",
                uid, len(found), uid_tag(uid), chosen.id, uid,
            )  # fmt: skip
        if self.claims is not None and (claim is None or claim.agent_id != chosen.id):
            await self.claims.record(uid, chosen.id)
        return chosen

    async def _create_claimed(self, uid: str) -> tuple[Any, bool]:
        """Create ``uid``'s agent under the user's claim, or wait for the worker that holds it.

        Returns the agent, and whether this call created it.
        """
        claims = self.claims
        if claims is None:
            return await self._create(uid), True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.claim_wait_s
        waiting = False
        while not await claims.claim(uid):
            held = await claims.get(uid)
            if held is None:  # released meanwhile: claim again
                continue
            if held.owner == claims.owner:  # ours, from an attempt that failed
                break
            stale = time.time() - held.claimed_at > self.claim_stale_s or owner_gone(held.owner)
            if held.agent_id is not None or stale:
                found = await self.tagged(uid)
                if found:
                    return await self._choose(uid, found), False
                if held.agent_id is None:
                    log.warning("worker %s claimed uid %s's agent and made none; taking over", held.owner, uid)
                if await claims.take_over(held):
                    break
                continue
            if not waiting:
                log.info("waiting for worker %s, which is creating the Letta agent of uid %s", held.owner, uid)
                waiting = True
            if loop.time() >= deadline:
                raise DeliveryError(
                    f"worker {held.owner} is still creating the Letta agent of uid {uid}; retrying", transient=True
                )
            await asyncio.sleep(CLAIM_POLL_S)
        found = await self.tagged(uid)  # another worker may have made it just before our claim
        if found:
            chosen = await self._choose(uid, found)
            return chosen, False
        try:
            state = await self._create(uid)
        except DeliveryError as exc:
            if unsent(exc):  # Letta never saw it: let another worker go ahead
                await claims.release(uid)
            raise  # otherwise the claim stays: the create may still land
        await claims.settle(uid, str(state.id))
        return state, True

    async def _create(self, uid: str) -> Any:
        """A new agent for ``uid``, with the memory tools."""
        args = await self.spec.create_args(uid)
        if "llm_config" in args and self.spec.llm.api_key:
            await self._ensure_llm_provider()
        tools = await self.memory_tool_ids()
        if tools:
            args["tool_ids"] = tools
            args["secrets"] = await self._memory_secrets(uid)
        async with letta_errors("creating an agent"):
            state = await self.client.agents.create(**args)
        log.info("created Letta agent %s for uid %s", state.id, uid)
        return state

    async def _ensure_llm_provider(self) -> None:
        """Keep LLM_API_KEY and LLM_BASE_URL in the Letta provider the agents' model names (once per process)."""
        if self._provider_ready:
            return
        llm = self.spec.llm
        body = {"api_key": llm.api_key, "base_url": llm.base_url.rstrip("/")}
        async with letta_errors("registering the LLM provider"):
            listed: Any = await self.client.get(
                "/v1/providers/", cast_to=object, options={"params": {"name": LLM_PROVIDER}}
            )
            found = (
                [p for p in listed if isinstance(p, dict) and p.get("name") == LLM_PROVIDER]
                if isinstance(listed, list)
                else []
            )
            if found:
                await self.client.patch(f"/v1/providers/{found[0]['id']}", cast_to=object, body=body)
            else:
                await self.client.post(
                    "/v1/providers/", cast_to=object, body={"name": LLM_PROVIDER, "provider_type": "openai", **body}
                )
        self._provider_ready = True

    async def memory_tool_ids(self) -> list[str]:
        """The ids of the memory tools agents get: our MCP server's, else the custom tool; none when off."""
        if self._tool_ids is None:
            async with self._tools_lock:
                if self._tool_ids is None:
                    ids: list[str] | None = []
                    if self.memory_tools == "mcp":
                        ids = await self._mcp_tool_ids()
                    if ids is None or self.memory_tools == "http":
                        async with letta_errors("installing the search_memory_http tool"):
                            ids = [(await self.client.tools.upsert(source_code=SOURCE)).id]
                    self._tool_ids = ids
        return self._tool_ids

    async def _mcp_tool_ids(self) -> list[str] | None:
        """Register this service's MCP server with Letta (or replace a stale one) and return its tools' ids.

        One registration serves every user: its bearer token is a template that Letta fills from
        the calling agent's secrets (``OMI_LETTA_TOKEN``). Listing the tools, Letta has no agent, and
        uses a token of :data:`TOOLS_UID`, a user with no memory. None if Letta refuses the URL.
        """
        url = f"{self.spec.service_url}/mcp"
        auth = f"Bearer {{{{ {SECRET_TOKEN} | {await self._listing_token()} }}}}"
        config: Any = {"mcp_server_type": "streamable_http", "server_url": url, "auth_header": "Authorization"}
        try:
            async with letta_errors("registering the MCP server"):
                servers = await self.client.mcp_servers.list()
                found = next((m for m in servers if m.server_name == MCP_SERVER_NAME and m.id), None)
                current = found is not None and getattr(found, "server_url", None) == url
                if found is not None and found.id and not (current and getattr(found, "auth_token", None) == auth):
                    # Letta does not update a token in place: replace the registration.
                    await self.client.mcp_servers.delete(found.id)
                    found = None
                if found is None or not found.id:
                    config["auth_token"] = auth
                    server_id = (await self.client.mcp_servers.create(server_name=MCP_SERVER_NAME, config=config)).id
                else:
                    server_id = found.id
        except DeliveryError as exc:
            if getattr(exc.__cause__, "status_code", None) not in (400, 422):
                raise
            log.warning("the Letta server refuses our MCP server at %s; agents get search_memory_http", url)
            return None
        async with letta_errors("listing the MCP server's tools"):
            tools = await self.client.mcp_servers.tools.list(str(server_id))
            if {t.name for t in tools} < set(MCP_TOOLS):
                await self.client.mcp_servers.refresh(str(server_id))
                tools = await self.client.mcp_servers.tools.list(str(server_id))
        ids = [t.id for t in tools if t.name in MCP_TOOLS and t.id]
        if len(ids) != len(MCP_TOOLS):
            raise DeliveryError(f"the Letta server lists {len(ids)} of our {len(MCP_TOOLS)} MCP tools; retrying")
        return ids

    async def _listing_token(self) -> str:
        """The API token of :data:`TOOLS_UID`, derived from the encryption key: every worker of a
        deployment (and every restart) computes the same one, so they register the MCP server alike."""
        token = PREFIX + base64.urlsafe_b64encode(installed().derive(b"omi-letta letta-tools token")).decode()[:32]
        if await self._tokens.resolve(token) == TOOLS_UID:
            return token
        _, made = await self._tokens.create(TOOLS_UID, "Letta: listing the MCP tools", token=token)
        for old in await self._tokens.list(TOOLS_UID):
            if old.hint != made.hint and old.revoked_at is None:  # from an earlier key
                await self._tokens.revoke(old.id)
        return token

    async def _memory_secrets(self, uid: str) -> dict[str, str]:
        """What the tools need: this service's URL and a new API token of ``uid``."""
        token, _ = await self._tokens.create(uid, AGENT_TOKEN_NAME)
        return {SECRET_URL: self.spec.service_url, SECRET_TOKEN: token}

    async def _give_memory_tools(self, agent: str, uid: str, tools: list[str]) -> None:
        secrets = await self._memory_secrets(uid)
        async with letta_errors("giving the agent the memory tools"):
            await self.client.agents.update(agent, secrets=secrets)
            for tool in tools:
                await self.client.agents.tools.attach(tool, agent_id=agent)
        log.info("gave Letta agent %s of uid %s the memory tools", agent, uid)

    async def keep_tools_token(self, agent: str, uid: str) -> None:
        """Give the agent new secrets if the API token of its memory tools is gone: the user's data was
        erased (``DELETE /v1/users/me/data``), or the token revoked. Not for a configured agent, which
        several users may share."""
        if self._configured.get(uid) or self._configured.get("*"):
            return
        tools = await self.memory_tool_ids()
        if not tools or any(t.name == AGENT_TOKEN_NAME and t.revoked_at is None for t in await self._tokens.list(uid)):
            return
        await self._give_memory_tools(agent, uid, tools)

    def message_lock(self, agent: str) -> asyncio.Lock:
        """Held while a message to ``agent`` runs: Letta leaves concurrent messages to one agent undefined."""
        return self._message_locks[agent]
