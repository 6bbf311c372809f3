"""The Letta sink: each user's turns as archival passages of their agent, and a recent-conversations block.

For every outbox record the sink reconciles one conversation: it groups the conversation's
turns as they are stored now (:func:`~memory.letta.passage_groups.group_turns`), compares the groups'
keys with the ledger, inserts the missing groups and deletes the stale ones. Delivering a record
twice therefore changes nothing, an edited or relabelled turn rewrites only its group, and a
deleted conversation leaves no passage behind. Inserts are claimed in the ledger first (see
:mod:`memory.letta.ledger`), so a crash or a lost reply never yields a second copy: a claim
that outlived ``stale_s`` is settled by looking the group's tag up in Letta. A request that timed
out can still be carried out by Letta after that, so a group inserted again is watched for a
while (:meth:`LettaSink.tick`) and a late copy is deleted.

Writes to one agent are serialized. The client never retries by itself (``max_retries=0``):
the outbox does, after the check above.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
from letta_client import APIConnectionError, APIError, APIStatusError, APITimeoutError, AsyncLetta
from letta_client import NotFoundError as LettaNotFound

from core.errors import DeliveryError
from memory.delivery.deliverer import Delivery, Sink
from memory.letta.ledger import Ledger
from memory.letta.letta_tool import SECRET_TOKEN, SECRET_URL, SOURCE
from memory.letta.passage_groups import PassageGroup, group_turns, recent_block, summary_line
from memory.store.crypto import installed
from memory.store.tokens import PREFIX, TokenStore

if TYPE_CHECKING:
    from app.settings import Settings
    from core.conversation import Conversation
    from core.segments import TranscriptSegment
    from memory.store.conversation_store import ConversationStore
    from memory.store.outbox import OutboxRecord

__all__ = ["AGENT_TOKEN_NAME", "MCP_SERVER_NAME", "RECENT_BLOCK", "TOOLS_UID", "AgentSpec", "LettaSink"]

log = logging.getLogger(__name__)

RECENT_BLOCK = "recent_conversations"
MCP_SERVER_NAME = "omi-letta"
LLM_PROVIDER = "omi-letta-llm"
MCP_TOOLS = ("search_memory", "get_conversation", "list_conversations", "who_said")
TOOLS_UID = "omi-letta:letta-tools"  # a user with no memory: Letta lists our MCP tools as them
AGENT_TOKEN_NAME = "Letta agent (memory tools)"  # the name of the API token an agent's memory tools use
RECENT_BLOCK_CHARS = 6000
BATCH = 100  # passages per insert request
WATCH_EVERY_S = 3.0  # how often watched groups are looked up again
EmbeddingSpec = Callable[[], Awaitable[tuple[str, int]]]
"""Returns the name and dimension of the embedding model behind this service's ``/v1/embeddings``."""


class AgentSpec:
    """What an agent we create looks like: model, embedding, memory blocks and tools, from the settings."""

    def __init__(self, settings: Settings, embedding: EmbeddingSpec) -> None:
        self.model = settings.letta.model
        self.llm = settings.llm
        self.embedding = settings.letta.embedding
        self.service_url = settings.service_url
        self.endpoint = f"{settings.service_url}/v1"
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
            "tags": ["omi", f"omi-uid:{uid}"],
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


@contextlib.asynccontextmanager
async def _letta(operation: str) -> AsyncIterator[None]:
    """Translate letta-client errors to :class:`DeliveryError` (status and operation only: no transcript text).

    Letta being down, slow or overloaded (no connection, a timeout, 408, 429 or 5xx) is ``transient``.
    """
    try:
        yield
    except APIStatusError as exc:
        busy = exc.status_code in (408, 429) or exc.status_code >= 500
        raise DeliveryError(f"Letta answered {exc.status_code} to {operation}", transient=busy) from exc
    except APITimeoutError as exc:
        raise DeliveryError(f"Letta did not answer {operation} in time", transient=True) from exc
    except APIConnectionError as exc:
        raise DeliveryError(f"Letta is unreachable ({operation})", transient=True) from exc
    except APIError as exc:
        raise DeliveryError(f"Letta failed {operation}: {type(exc).__name__}") from exc


def _unsent(exc: BaseException) -> bool:
    """Whether the request surely never reached Letta (no connection could be made)."""
    cause = exc.__cause__
    return isinstance(cause, APIConnectionError) and isinstance(cause.__cause__, httpx.ConnectError)


class LettaSink(Sink):
    """Delivers each user's conversations to their Letta agent (see the module docstring)."""

    name = "letta"

    def __init__(
        self,
        client: AsyncLetta,
        store: ConversationStore,
        spec: AgentSpec,
        *,
        agents: dict[str, str] | None = None,
        passage_max_chars: int = 1500,
        recent_conversations: int = 10,
        notify_on_close: bool = False,
        stale_s: float = 60.0,
        watch_s: float = 3600.0,
        memory_tools: str = "mcp",
    ) -> None:
        self.client = client
        self.store = store
        self.ledger = Ledger(store.engine)
        self.spec = spec
        self.passage_max_chars = passage_max_chars
        self.recent_conversations = recent_conversations
        self.notify_on_close = notify_on_close
        self.stale_s = stale_s
        self.watch_s = watch_s  # how long a re-inserted group is watched for a late copy
        self._next_watch = 0.0
        self.memory_tools = memory_tools  # mcp | http | none: see LETTA_MEMORY_TOOLS
        self._tool_ids: list[str] | None = None
        self._tools_lock = asyncio.Lock()
        self._provider_ready = False
        self._tokens = TokenStore(store.engine)
        self._configured = dict(agents or {})
        self._agents: dict[str, str] = {}
        self._archives: dict[str, str] = {}
        self._uid_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._agent_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # passages and blocks
        self._message_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # messages (runs)

    @classmethod
    def from_settings(cls, settings: Settings, store: ConversationStore, embedding: EmbeddingSpec) -> LettaSink:
        """The sink for the configured Letta server (LETTA_BASE_URL, else the local one)."""
        letta = settings.letta
        client = AsyncLetta(
            base_url=letta.url,
            api_key=letta.api_key or None,
            project_id=letta.project_id or None,
            max_retries=0,
            timeout=letta.timeout_s,
        )
        return cls(
            client,
            store,
            AgentSpec(settings, embedding),
            agents=letta.agents(),
            passage_max_chars=letta.passage_max_chars,
            recent_conversations=letta.recent_conversations,
            notify_on_close=letta.notify_on_close,
            stale_s=2 * letta.timeout_s,
            memory_tools=letta.memory_tools,
        )

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.client.close()

    # --- Sink -------------------------------------------------------------------------------

    async def deliver(
        self, record: OutboxRecord, conversation: Conversation | None, turns: list[TranscriptSegment]
    ) -> None:
        await self.deliver_batch([Delivery(record, conversation, turns)])

    async def deliver_batch(self, items: list[Delivery]) -> None:
        """Apply a user's records together: one insert request for all their missing groups, one block update."""
        uid = items[0].record.uid
        agent = await self.agent_for(uid)
        states: dict[str, Conversation | None] = {}  # conversations to sync, as stored now
        deleted: list[str] = []
        closed: list[Conversation] = []
        for record, conversation, _ in items:
            cid = record.conversation_id
            if record.action == "deleted":
                deleted.append(cid)
                states[cid] = None
            elif record.action == "turns" and cid not in deleted:
                states[cid] = conversation
            elif record.action == "closed" and conversation is not None:
                closed.append(conversation)
        async with self._agent_locks[agent]:
            if states:
                await self.sync_many(agent, uid, states)
                if any(c is not None for c in states.values()):
                    await self._keep_tools_token(agent, uid)
            for cid in deleted:
                await self._sweep(agent, cid)
            if closed or deleted:
                await self.refresh_recent(agent, uid)
            if self.notify_on_close:
                for conversation in closed:
                    await self._notify(agent, uid, conversation)

    # --- agents -----------------------------------------------------------------------------

    async def agent_for(self, uid: str) -> str:
        """The agent of ``uid``: the configured one, else the one tagged ``omi-uid:<uid>``, else a new one.

        An agent we create or adopt gets the memory's tools: those of our MCP server, or the
        ``search_memory_http`` custom tool where the Letta server refuses it (``LETTA_MEMORY_TOOLS``).
        """
        if uid in self._agents:
            return self._agents[uid]
        async with self._uid_locks[uid]:
            if uid in self._agents:
                return self._agents[uid]
            configured = self._configured.get(uid) or self._configured.get("*")
            if configured is not None:
                async with _letta("finding the configured agent"):
                    found = [await self.client.agents.retrieve(configured, include=["agent.tools"])]
            else:
                async with _letta("listing agents"):
                    page = await self.client.agents.list(
                        tags=[f"omi-uid:{uid}"], match_all_tags=True, limit=1, include=["agent.tools"]
                    )
                found = list(page.items)
            if found:
                agent = found[0].id
                tools = await self.memory_tool_ids()
                if not set(tools) <= {t.id for t in found[0].tools or []}:
                    await self._give_memory_tools(agent, uid, tools)
            else:
                args = await self.spec.create_args(uid)
                if "llm_config" in args and self.spec.llm.api_key:
                    await self._ensure_llm_provider()
                tools = await self.memory_tool_ids()
                if tools:
                    args["tool_ids"] = tools
                    args["secrets"] = await self._memory_secrets(uid)
                async with _letta("creating an agent"):
                    agent = (await self.client.agents.create(**args)).id
                log.info("created Letta agent %s for uid %s", agent, uid)
            self._agents[uid] = agent
            return agent

    async def _ensure_llm_provider(self) -> None:
        """Keep LLM_API_KEY and LLM_BASE_URL in the Letta provider the agents' model names (once per process)."""
        if self._provider_ready:
            return
        llm = self.spec.llm
        body = {"api_key": llm.api_key, "base_url": llm.base_url.rstrip("/")}
        async with _letta("registering the LLM provider"):
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
                        async with _letta("installing the search_memory_http tool"):
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
            async with _letta("registering the MCP server"):
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
        async with _letta("listing the MCP server's tools"):
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
        async with _letta("giving the agent the memory tools"):
            await self.client.agents.update(agent, secrets=secrets)
            for tool in tools:
                await self.client.agents.tools.attach(tool, agent_id=agent)
        log.info("gave Letta agent %s of uid %s the memory tools", agent, uid)

    async def _keep_tools_token(self, agent: str, uid: str) -> None:
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

    # --- passages ---------------------------------------------------------------------------

    async def sync_many(self, agent: str, uid: str, conversations: dict[str, Conversation | None]) -> int:
        """Make the agent hold exactly these conversations' current passage groups (``None``: deleted).

        One insert request carries every missing group. Returns how many were inserted.

        Raises:
            DeliveryError: Letta failed, or another process is inserting these groups right now.
        """
        missing: dict[str, list[PassageGroup]] = {}
        stale: dict[str, str] = {}
        for cid, conversation in conversations.items():
            desired = {g.key: g for g in group_turns(conversation, self.passage_max_chars)} if conversation else {}
            known = await self.ledger.entries(agent, cid)
            stored = {k: e.passage_id for k, e in known.items() if e.state == "stored" and e.passage_id}
            pending = [k for k, e in known.items() if e.state == "pending"]
            if pending:
                young = [k for k in pending if time.time() - known[k].updated_at < self.stale_s]
                if young:
                    raise DeliveryError(
                        f"{len(young)} passage(s) of a conversation may still be in flight; retrying", transient=True
                    )
                stored.update(await self._settle(agent, uid, cid, pending))
            missing[cid] = [g for k, g in desired.items() if k not in stored]
            stale.update({k: pid for k, pid in stored.items() if k not in desired})
        claims = {cid: [g.key for g in groups] for cid, groups in missing.items() if groups}
        if claims:
            if not await self.ledger.claim_many(uid=uid, agent_id=agent, keys=claims):
                raise DeliveryError(
                    "another process is inserting passages of this conversation; retrying", transient=True
                )
            try:
                inserted = await self._insert(agent, [g for groups in missing.values() for g in groups])
            except DeliveryError as exc:
                if _unsent(exc):
                    await self.ledger.forget(agent, [k for keys in claims.values() for k in keys])
                raise
            await self.ledger.stored(agent, inserted)
        for key, passage_id in stale.items():
            await self._delete_passage(agent, passage_id)
            await self.ledger.forget(agent, [key])
        return sum(len(keys) for keys in claims.values())

    async def _settle(self, agent: str, uid: str, conversation_id: str, keys: list[str]) -> dict[str, str]:
        """Resolve claims a crash or a lost reply left behind: keep what Letta has, forget the rest."""
        found: dict[str, list[str]] = defaultdict(list)
        for i in range(0, len(keys), 50):
            tags = [f"grp:{k}" for k in keys[i : i + 50]]
            async with _letta("looking up passages by tag"):
                hits = await self.client.passages.search(agent_id=agent, tags=tags, tag_match_mode="any", limit=100)
            for hit in hits:
                for tag in hit.passage.tags or []:
                    if tag.startswith("grp:") and hit.passage.id:
                        found[tag[4:]].append(hit.passage.id)
        settled: dict[str, str] = {}
        for key in keys:
            ids = sorted(set(found.get(key, [])))
            if ids:
                settled[key] = ids[0]
                for extra in ids[1:]:  # two late inserts landed: keep one
                    await self._delete_passage(agent, extra)
        await self.ledger.stored(agent, settled)
        missing = [k for k in keys if k not in settled]
        await self.ledger.forget(agent, missing)
        if missing:  # they will be inserted again; an earlier request of theirs may still land
            await self.ledger.watch(uid=uid, agent_id=agent, conversation_id=conversation_id, keys=missing)
            self._next_watch = 0.0
        log.info("settled %d unconfirmed passage insert(s): %d were in Letta", len(keys), len(settled))
        return settled

    async def tick(self) -> None:
        """Every few seconds, look for late copies of watched groups and delete them."""
        if time.monotonic() < self._next_watch:
            return
        self._next_watch = time.monotonic() + WATCH_EVERY_S
        watched = await self.ledger.watched()
        by_agent: dict[str, list[str]] = defaultdict(list)
        for agent, key, since in watched:
            if time.time() - since > self.watch_s:
                await self.ledger.unwatch(agent, [key])
            else:
                by_agent[agent].append(key)
        for agent, keys in by_agent.items():
            async with self._agent_locks[agent]:
                await self._dedupe(agent, keys)

    async def _dedupe(self, agent: str, keys: list[str]) -> int:
        """Delete every passage of groups ``keys`` but the one the ledger holds; how many were deleted."""
        deleted = 0
        for i in range(0, len(keys), 50):
            chunk = keys[i : i + 50]
            async with _letta("looking up passages by tag"):
                hits = await self.client.passages.search(
                    agent_id=agent, tags=[f"grp:{k}" for k in chunk], tag_match_mode="any", limit=100
                )
            for hit in hits:
                key = next((t[4:] for t in hit.passage.tags or [] if t.startswith("grp:")), None)
                if key is None or not hit.passage.id:
                    continue
                entry = await self.ledger.entry(agent, key)
                if entry is not None and entry.state == "pending":
                    continue  # being inserted again: settling sorts it out
                if entry is None or hit.passage.id != entry.passage_id:
                    await self._delete_passage(agent, hit.passage.id)
                    deleted += 1
        if deleted:
            log.warning("deleted %d late duplicate passage(s) of agent %s", deleted, agent)
        return deleted

    async def _insert(self, agent: str, groups: list[PassageGroup]) -> dict[str, str]:
        """Insert groups; ``{key: passage_id}``. Many at once go through the agent's archive in one request."""
        out: dict[str, str] = {}
        archive = self._archives.get(agent) or await self._archive(agent)
        if archive is None or len(groups) == 1:
            first, groups = groups[0], groups[1:]
            async with _letta("inserting a passage"):
                created = await self.client.agents.passages.create(
                    agent, text=first.text, created_at=first.created_at, tags=first.tags
                )
            if not created or not created[0].id:
                raise DeliveryError("Letta's insert returned no passage")
            out[first.key] = created[0].id
            if groups:
                archive = await self._archive(agent)
        for i in range(0, len(groups), BATCH):
            chunk = groups[i : i + BATCH]
            assert archive is not None
            async with _letta("inserting passages"):
                created_many = await self.client.archives.passages.create_many(
                    archive,
                    passages=[{"text": g.text, "created_at": g.created_at, "tags": g.tags} for g in chunk],
                )
            by_tag = {t[4:]: p.id for p in created_many for t in (p.tags or []) if t.startswith("grp:") and p.id}
            for group in chunk:
                if group.key not in by_tag:
                    raise DeliveryError("Letta's batch insert did not return every passage")
                out[group.key] = by_tag[group.key]
        return out

    async def _archive(self, agent: str) -> str | None:
        """The agent's archive id (Letta makes it on the first insert)."""
        async with _letta("finding the agent's archive"):
            page = await self.client.archives.list(agent_id=agent, limit=1)
        items = list(page.items)
        if items:
            self._archives[agent] = items[0].id
            return items[0].id
        return None

    async def _delete_passage(self, agent: str, passage_id: str) -> None:
        """Delete a passage; one already gone (deleted before the ledger could forget it) is fine."""
        async with _letta("deleting a passage"):
            with contextlib.suppress(LettaNotFound):  # inside: `_letta` would make it a DeliveryError
                await self.client.agents.passages.delete(passage_id, agent_id=agent)

    async def _sweep(self, agent: str, conversation_id: str) -> None:
        """Delete any passage still tagged with a deleted conversation (one the ledger did not know)."""
        while True:
            async with _letta("looking up passages by tag"):
                hits = await self.client.passages.search(agent_id=agent, tags=[f"conv:{conversation_id}"], limit=100)
            if not hits:
                return
            for hit in hits:
                if hit.passage.id:
                    await self._delete_passage(agent, hit.passage.id)

    # --- core memory --------------------------------------------------------------------------

    async def refresh_recent(self, agent: str, uid: str) -> str:
        """Rewrite the agent's ``recent_conversations`` block from the store; returns its value."""
        value = recent_block(await self.store.recent(uid, self.recent_conversations), RECENT_BLOCK_CHARS)
        try:
            async with _letta("updating the recent_conversations block"):
                await self.client.agents.blocks.update(RECENT_BLOCK, agent_id=agent, value=value)
        except DeliveryError as exc:
            if not isinstance(exc.__cause__, LettaNotFound):
                raise
            async with _letta("creating the recent_conversations block"):
                block = await self.client.blocks.create(label=RECENT_BLOCK, value=value, limit=RECENT_BLOCK_CHARS)
                await self.client.agents.blocks.attach(block.id, agent_id=agent)
        return value

    async def _notify(self, agent: str, uid: str, conversation: Conversation) -> None:
        """Tell the agent a conversation ended, at most once (a claimed ledger row marks it sent)."""
        key = f"notify:{conversation.id}"[:64]
        if not await self.ledger.claim(uid=uid, agent_id=agent, conversation_id=conversation.id, keys=[key]):
            return
        text = f"[automated note from omi-letta] A conversation just ended: {summary_line(conversation)[2:]}"
        async with self.message_lock(agent), _letta("notifying the agent"):
            await self.client.agents.messages.create(
                agent, messages=[{"role": "user", "content": text}], timeout=max(120.0, self.stale_s)
            )
        await self.ledger.stored(agent, {key: "message"})
