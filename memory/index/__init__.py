"""Vector indexes of turn embeddings behind one small interface; settings choose one at startup."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from memory.index.base import IndexHit, IndexItem, VectorIndex

if TYPE_CHECKING:
    from app.settings import VectorIndexSettings

__all__ = ["IndexHit", "IndexItem", "VectorIndex", "load_index"]


def load_index(settings: VectorIndexSettings, data_dir: Path) -> VectorIndex:
    """Construct the index named by ``VECTOR_INDEX``; the local one lives in ``data_dir/index``."""
    if settings.backend == "local":
        from memory.index.local import LocalVectorIndex

        return LocalVectorIndex(data_dir / "index")
    if settings.backend == "pinecone":
        from memory.index.pinecone import PineconeIndex

        return PineconeIndex(
            api_key=settings.pinecone_api_key, host=settings.pinecone_host, index_name=settings.pinecone_index
        )
    raise ValueError(f"VECTOR_INDEX must be one of: local, pinecone (got {settings.backend!r})")
