"""When audio last arrived from each user's device, shared by every worker (``device_activity``).

The service notes the time in memory as frames arrive and writes it here once per health check,
so a device that went quiet can be told from one that never streamed, across restarts and workers.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from memory.store.models import DeviceActivityRow

__all__ = ["DeviceActivity"]


class DeviceActivity:
    """Reads and writes ``device_activity``; shares the conversation store's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def heard(self, times: dict[str, float]) -> None:
        """Audio arrived from these users' devices at these times (a later time already written stays)."""
        for uid, at in times.items():
            for _ in range(2):  # another worker may insert the user's row between our update and insert
                async with self._sessions() as session, session.begin():
                    row = await session.get(DeviceActivityRow, uid)
                    if row is not None:
                        await session.execute(
                            update(DeviceActivityRow)
                            .where(DeviceActivityRow.uid == uid, DeviceActivityRow.last_audio_at < at)
                            .values(last_audio_at=at)
                        )
                        break
                try:
                    async with self._sessions() as session, session.begin():
                        session.add(DeviceActivityRow(uid=uid, last_audio_at=at))
                    break
                except IntegrityError:
                    continue

    async def since(self, after: float) -> dict[str, float]:
        """Every user whose device sent audio after ``after``, with when it last did."""
        query = select(DeviceActivityRow.uid, DeviceActivityRow.last_audio_at).where(
            DeviceActivityRow.last_audio_at > after
        )
        async with self._sessions() as session:
            return {uid: at for uid, at in (await session.execute(query)).all()}
