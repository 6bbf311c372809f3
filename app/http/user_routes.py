"""What the OMI app asks and sets at start-up: the user's language, onboarding, and notification token."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, get, patch, post

from app.service.services import Services
from memory.store.conversation_query import ConversationQuery
from memory.store.user_settings import UNSET

__all__ = ["UserController"]

OK = {"status": "ok"}


class Language(msgspec.Struct):
    """The user's primary language, as the app names it (``en``, ``de``, ``multi``, ...)."""

    language: Annotated[str, msgspec.Meta(min_length=1, max_length=16, pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")]


class Onboarding(msgspec.Struct, kw_only=True):
    """Whether the user finished the app's onboarding, and how they found it."""

    completed: bool
    acquisition_source: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class NotificationToken(msgspec.Struct, kw_only=True):
    """The app's push token and time zone. No notifications are pushed from here: only the zone is kept."""

    fcm_token: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    time_zone: Annotated[str, msgspec.Meta(max_length=64)] | None = None


class UserController(Controller):
    """The user's app settings."""

    path = "/v1/users"
    tags = ["user"]

    @get("/language", summary="The user's language")
    async def get_language(self, services: Services, uid: str) -> dict[str, str | None]:
        """``{language}``: null until the app sets it (the app then asks the user once)."""
        return {"language": (await services.storage.settings.get(uid)).language}

    @patch("/language", summary="Set the user's language")
    async def set_language(self, services: Services, uid: str, data: Language) -> dict[str, str]:
        """Keep the language the user chose."""
        await services.storage.settings.update(uid, language=data.language)
        return OK

    @get("/onboarding", summary="Whether the user finished onboarding")
    async def get_onboarding(self, services: Services, uid: str) -> dict[str, Any]:
        """``{completed, acquisition_source}``; a user who has conversations here counts as onboarded."""
        settings = await services.storage.settings.get(uid)
        completed = settings.onboarding_completed
        if completed is None:
            found, _ = await services.storage.store.page(uid, limit=1, offset=0, query=ConversationQuery(), count=False)
            completed = bool(found)
        return {"completed": completed, "acquisition_source": settings.acquisition_source or ""}

    @patch("/onboarding", summary="Record that the user finished onboarding")
    async def set_onboarding(self, services: Services, uid: str, data: Onboarding) -> dict[str, str]:
        """Keep ``completed`` (and ``acquisition_source`` when given)."""
        source = data.acquisition_source if data.acquisition_source is not None else UNSET
        await services.storage.settings.update(uid, onboarding_completed=data.completed, acquisition_source=source)
        return OK

    @post("/fcm-token", summary="The app's push token and time zone", status_code=200)
    async def set_notification_token(self, services: Services, uid: str, data: NotificationToken) -> dict[str, str]:
        """Accept it; the time zone is kept, the token is not (nothing is pushed from here)."""
        if data.time_zone:
            await services.storage.settings.update(uid, time_zone=data.time_zone)
        return {"status": "Ok"}
