"""Delivery sinks: where stored turns must arrive exactly once. Settings choose them at startup."""

from __future__ import annotations

from typing import TYPE_CHECKING

from memory.delivery.deliverer import Sink
from memory.delivery.index_sink import IndexSink

if TYPE_CHECKING:
    from app.settings import Settings
    from memory.search.hybrid import MemorySearch
    from memory.store.conversation_store import ConversationStore

__all__ = ["IndexSink", "Sink", "load_sinks"]


def load_sinks(
    settings: Settings, store: ConversationStore, search: MemorySearch, names: tuple[str, ...] | None = None
) -> list[Sink]:
    """The sinks ``names`` (default ``settings.sinks``): the memory index, and each user's Letta agent."""
    sinks: list[Sink] = []
    for name in settings.sinks if names is None else names:
        if name == "index":
            sinks.append(IndexSink(search))
        elif name == "letta":
            from memory.letta.letta_sink import LettaSink

            async def embedding() -> tuple[str, int]:
                embedder = await search.embedder()
                return embedder.name, embedder.dim

            sinks.append(LettaSink.from_settings(settings, store, embedding))
    return sinks
