"""Vector indexes of turn embeddings behind one small interface; settings choose one at startup."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from memory.search.vector_index import VectorIndex

if TYPE_CHECKING:
    from memory.memory_settings import VectorIndexSettings

__all__ = ["load_index"]


def load_index(settings: VectorIndexSettings, data_dir: Path, database_url: str = "") -> VectorIndex:
    """Construct the index named by ``VECTOR_INDEX``; the local one lives in ``data_dir/index``.

    ``pgvector`` uses PGVECTOR_URL, else ``database_url`` (the store's database).
    """
    if settings.backend == "local":
        from memory.search.local_index import LocalVectorIndex

        return LocalVectorIndex(data_dir / "index")
    if settings.backend == "pinecone":
        from memory.search.pinecone_index import PineconeIndex

        return PineconeIndex(
            api_key=settings.pinecone_api_key, host=settings.pinecone_host, index_name=settings.pinecone_index
        )
    if settings.backend == "pgvector":
        from memory.search.pgvector_index import PgVectorIndex

        url = settings.pgvector_url or database_url
        if not url.startswith("postgresql+asyncpg://"):
            raise ValueError(
                "VECTOR_INDEX=pgvector needs PostgreSQL: set PGVECTOR_URL or a postgresql+asyncpg:// DATABASE_URL"
            )
        return PgVectorIndex(url)
    raise ValueError(f"VECTOR_INDEX must be one of: local, pinecone, pgvector (got {settings.backend!r})")
