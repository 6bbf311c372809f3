"""What several workers share through Redis (``REDIS_URL``): leases, connect limits and live fan-out."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.exceptions import RedisError

from app.service.connect_limits import ConnectLimiter, LocalConnectLimiter
from app.settings import Settings
from memory.redis_state import RedisConnectLimiter, RedisLeases, RedisLiveBus, RedisState
from memory.store.leases import Leases, LocalLeases

__all__ = ["Cluster"]

log = logging.getLogger(__name__)


@dataclass
class Cluster:
    """This worker's view of the others: which worker owns each user's stream, and how often users connect."""

    leases: Leases
    connect_limiter: ConnectLimiter
    redis: RedisState | None = None
    bus: RedisLiveBus | None = None  # every worker's live events, when there are several

    @classmethod
    async def join(cls, settings: Settings) -> Cluster:
        """With REDIS_URL: the Redis connection with leases, limits and a live bus in it; else local ones."""
        interval_s = settings.stream.connect_interval_s
        url = settings.cluster.redis_url
        if not url:
            return cls(LocalLeases(), LocalConnectLimiter(interval_s))
        redis = RedisState(url, worker=settings.cluster.worker_id or None)
        try:
            await redis.ping()
        except RedisError as exc:  # an outage must not stop ingest; what needs Redis waits for it
            redis.failed("starting", exc)
        log.info("sharing live state through Redis at %s as worker %s", redis.host, redis.worker)
        if settings.database_url.startswith("sqlite") or settings.vector_index.backend == "local":
            log.warning(
                "REDIS_URL is set, but the database or the vector index is this machine's own (SQLite, "
                "VECTOR_INDEX=local): other workers cannot share them; use a PostgreSQL DATABASE_URL and "
                "VECTOR_INDEX=pgvector or pinecone"
            )
        return cls(
            RedisLeases(redis, settings.cluster.lease_ttl_s),
            RedisConnectLimiter(redis, interval_s),
            redis,
            RedisLiveBus(redis),
        )

    async def close(self) -> None:
        """Close the Redis connection."""
        if self.redis is not None:
            await self.redis.close()
