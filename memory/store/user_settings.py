"""A user's app settings: the language and onboarding the OMI app asks for at start-up, and their chat view."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from memory.store.models import UserSettingsRow

__all__ = ["UNSET", "UserSettings", "UserSettingsStore"]

UNSET: Any = msgspec.UNSET
"""Leaves a setting as it is in :meth:`UserSettingsStore.update`."""


class UserSettings(msgspec.Struct, kw_only=True):
    """One user's settings; None where the app never set them."""

    language: str | None = None
    onboarding_completed: bool | None = None
    acquisition_source: str | None = None
    time_zone: str | None = None
    chat_cleared_at: float | None = None


_FIELDS = tuple(UserSettings.__struct_fields__)


class UserSettingsStore:
    """Reads and writes user settings; every write is committed on return."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def get(self, uid: str) -> UserSettings:
        """The user's settings (all None for a user the app never configured)."""
        async with self._sessions() as session:
            row = await session.get(UserSettingsRow, uid)
        return UserSettings(**{f: getattr(row, f) for f in _FIELDS}) if row else UserSettings()

    async def update(self, uid: str, **changes: Any) -> UserSettings:
        """Set the settings named in ``changes`` (a value of :data:`UNSET` leaves one as it is)."""
        unknown = set(changes) - set(_FIELDS)
        if unknown:
            raise ValueError(f"no such user setting: {', '.join(sorted(unknown))}")
        wanted = {k: v for k, v in changes.items() if v is not UNSET}
        for attempt in range(2):  # a first write of the same user may race us
            try:
                async with self._sessions() as session, session.begin():
                    row = await session.get(UserSettingsRow, uid)
                    if row is None:
                        row = UserSettingsRow(uid=uid, updated_at=time.time())
                        session.add(row)
                    for name, value in wanted.items():
                        setattr(row, name, value)
                    row.updated_at = time.time()
                break
            except IntegrityError:
                if attempt:
                    raise
        return await self.get(uid)

    async def delete(self, uid: str) -> None:
        """Forget the user's settings (their data is erased)."""
        async with self._sessions() as session, session.begin():
            await session.execute(delete(UserSettingsRow).where(UserSettingsRow.uid == uid))
