"""What leaves the store: memory search, delivery to the sinks (the index and Letta), and chat with the agents.

Settings choose the sinks (``LETTA_DELIVERY``), the vector index and the embedding model here,
once; the sink and chat share one Letta agent registry.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from app.settings import Settings
from core.metrics import Metrics
from memory.delivery.deliverer import Deliverer, DeliveryLock, Sink
from memory.delivery.index_sink import IndexSink
from memory.delivery.stream_delivery import StreamDeliverer
from memory.letta.agent_claims import AgentClaims
from memory.letta.agents import AgentRegistry, EmbeddingSpec
from memory.letta.letta_chat import AgentChat
from memory.letta.letta_sink import LettaSink
from memory.redis_state import RedisState, worker_id
from memory.search.hybrid import MemorySearch, open_search
from memory.store.conversation_store import ConversationStore
from memory.store.facts import FactStore
from memory.store.outbox import Outbox, RetryPolicy
from memory.store.tokens import TokenStore
from memory.understand.structure import Structurer
from memory.understand.understanding import Understanding

__all__ = [
    "Outbound",
    "agent_registry",
    "delivery_for",
    "embedding_of",
    "load_sinks",
    "memory_search",
    "reembed_if_changed",
    "understanding_for",
]

log = logging.getLogger(__name__)


def memory_search(settings: Settings) -> MemorySearch:
    """The hybrid memory search of the configured embedding model and vector index (its model loads on first use)."""
    return open_search(settings.embeddings, settings.vector_index, settings.server.data_dir, settings.database_url)


def embedding_of(search: MemorySearch) -> EmbeddingSpec:
    """The name and dimension of ``search``'s model, which answers this service's ``/v1/embeddings``."""

    async def embedding() -> tuple[str, int]:
        embedder = await search.embedder()
        return embedder.name, embedder.dim

    return embedding


def agent_registry(settings: Settings, store: ConversationStore, embedding: EmbeddingSpec) -> AgentRegistry:
    """The Letta agents of the configured server; they embed through this service's ``/v1/embeddings``.

    Agents are created under a claim in the database, so that workers sharing it create one per user.
    """
    owner = f"{settings.cluster.worker_id}:{worker_id()}" if settings.cluster.worker_id else worker_id()
    return AgentRegistry.from_settings(
        settings.letta,
        settings.llm,
        service_url=settings.service_url,
        tokens=TokenStore(store.engine),
        embedding=embedding,
        claims=AgentClaims(store.engine, owner),
    )


def understanding_for(
    settings: Settings, store: ConversationStore, search: MemorySearch | None, letta: LettaSink | None = None
) -> Understanding | None:
    """What understands closed conversations (UNDERSTAND_CONVERSATIONS), or None when it is ``off``;
    with ``letta``, the agent's facts block follows the facts."""
    llm = settings.llm
    if llm.understand == "off":
        return None
    url = llm.base_url if llm.understand == "llm" else ""
    structurer = Structurer(url, llm.model, llm.api_key, timeout_s=llm.understand_timeout_s)
    on_facts = letta.refresh_facts if letta is not None else None
    return Understanding(store, FactStore(store.engine), structurer, search, on_facts=on_facts)


def load_sinks(
    settings: Settings,
    store: ConversationStore,
    search: MemorySearch,
    names: tuple[str, ...] | None = None,
    *,
    agents: AgentRegistry | None = None,
) -> list[Sink]:
    """The sinks ``names`` (default ``settings.sinks``): the memory index, and each user's Letta agent.

    The index sink understands each closed conversation once its turns are indexed (its summary
    and facts, :func:`understanding_for`)."""
    chosen = settings.sinks if names is None else names
    letta: LettaSink | None = None
    if "letta" in chosen:
        registry = agents or agent_registry(settings, store, embedding_of(search))
        letta = LettaSink.from_settings(settings.letta, store, registry)
    sinks: list[Sink] = []
    for name in chosen:
        if name == "index":
            understanding = understanding_for(settings, store, search, letta)
            if understanding is None:
                sinks.append(IndexSink(search))
            else:
                sinks.append(
                    IndexSink(
                        search,
                        on_closed=understanding.conversation,
                        on_deleted=understanding.forget,
                        on_facts=understanding.reindex_facts,
                    )
                )
        elif name == "letta" and letta is not None:
            sinks.append(letta)
    return sinks


def delivery_for(
    settings: Settings,
    store: ConversationStore,
    search: MemorySearch,
    metrics: Metrics,
    *,
    sinks: tuple[str, ...] | None = None,
    redis: RedisState | None = None,
    agents: AgentRegistry | None = None,
) -> tuple[Outbox, Deliverer]:
    """The outbox and a (not yet started) deliverer for ``sinks`` (default: the configured ones); with
    ``redis``, one that shares the work with other workers through Redis Streams."""
    d = settings.delivery
    outbox = Outbox(
        store.engine, RetryPolicy(max_attempts=d.max_attempts, base_delay_s=d.base_delay_s, max_delay_s=d.max_delay_s)
    )
    chosen = load_sinks(settings, store, search, sinks, agents=agents)
    if redis is not None:
        c = settings.cluster
        streams = StreamDeliverer(
            store,
            outbox,
            chosen,
            metrics=metrics,
            redis=redis,
            poll_s=d.poll_s,
            claim_idle_s=c.claim_idle_s,
            lock_ttl_s=c.lease_ttl_s,
        )
        return outbox, streams
    return outbox, Deliverer(store, outbox, chosen, metrics=metrics, poll_s=d.poll_s)


async def reembed_if_changed(search: MemorySearch, store: ConversationStore) -> int:
    """When the index's vectors come from another embedding model (or recipe), drop them and queue
    every stored conversation for the index sink again, which embeds it with the configured model;
    how many conversations were queued (0: nothing changed). Until they are delivered, search
    finds those turns by their words only."""
    if "index" not in store.sinks:
        return 0
    keys = await store.keys()
    why = await search.stale_embeddings(has_data=bool(keys))
    if why is None:
        return 0
    users = sorted({uid for uid, _, _ in keys})
    log.warning("%s: re-embedding %d conversation(s) of %d user(s) through the outbox", why, len(keys), len(users))
    for uid in users:
        await search.index.delete(uid)
    for uid, conversation_id, _ in keys:
        await store.requeue(uid, conversation_id, ("index",))
    await search.mark_embeddings()
    return len(keys)


@dataclass
class Outbound:
    """Memory search, and, when changes are queued, the outbox, its deliverer and chat."""

    search: MemorySearch
    outbox: Outbox | None = None
    deliverer: Deliverer | None = None  # None when changes are not queued
    chat: AgentChat | None = None  # chat with each user's Letta agent; None without Letta delivery
    lock: DeliveryLock | None = None  # held while this process runs the delivery loops
    _warming: asyncio.Task[object] | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls,
        settings: Settings,
        store: ConversationStore,
        metrics: Metrics,
        *,
        queue: bool,
        redis: RedisState | None = None,
    ) -> Outbound:
        """Search over the configured index; with ``queue``, delivery to the configured sinks (not started)."""
        search = memory_search(settings)
        if not queue:
            return cls(search)
        agents = agent_registry(settings, store, embedding_of(search)) if "letta" in settings.sinks else None
        outbox, deliverer = delivery_for(settings, store, search, metrics, redis=redis, agents=agents)
        chat = AgentChat(agents, timeout_s=settings.llm.chat_timeout_s) if agents is not None else None
        return cls(search, outbox, deliverer, chat)

    def start_delivery(self, settings: Settings, store: ConversationStore) -> bool:
        """Run the delivery loops here, unless another process (a running ``omi-letta serve``) does.

        Returns whether this process delivers.
        """
        if self.deliverer is None:
            return False
        if self.lock is None:
            lock = DeliveryLock(settings.server.data_dir)
            if not lock.acquire():
                log.warning("another process delivers from %s; this one only queues", settings.server.data_dir)
                return False
            self.lock = lock
            store.on_enqueue = self.deliverer.wake
            # Delivery embeds every turn: load the model now, and re-embed if it changed, then deliver.
            self._warming = asyncio.create_task(self._start(self.deliverer, store), name="load-embedder")
        return True

    async def _start(self, deliverer: Deliverer, store: ConversationStore) -> None:
        try:
            await reembed_if_changed(self.search, store)
        except Exception as exc:  # a model that fails to load fails each delivery instead, with its error
            log.warning("could not check the memory index's embedding model: %s", exc)
        deliverer.start()

    async def close(self) -> None:
        """Stop delivering, release the lock, close the index."""
        if self._warming is not None and not self._warming.done():
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)
        if self.deliverer is not None:
            await self.deliverer.stop()
        if self.lock is not None:
            self.lock.release()
        await self.search.close()
