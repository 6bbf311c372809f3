"""The caller's conversations, in the OMI ``Conversation`` shape."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.exceptions import ValidationException
from litestar.params import Parameter

from app.http.deps import MAX_OFFSET
from app.service.services import Services
from core.errors import (
    NotFoundError,
)
from memory.store.voice_profiles import clean_name

if TYPE_CHECKING:
    pass


__all__ = ["ConversationController", "SpeakerRelabel"]

log = logging.getLogger(__name__)


class ConversationController(Controller):
    """The caller's conversations, in the OMI ``Conversation`` shape."""

    path = "/v1/conversations"
    tags = ["conversations"]

    @get("/", summary="List conversations, newest first")
    async def list_conversations(
        self,
        services: Services,
        uid: str,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 25,
        offset: Annotated[int, Parameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        """A page of the caller's conversations with their segments, and the total count."""
        items, total = await services.storage.store.page(uid, limit=limit, offset=offset)
        return {"items": [c.to_omi() for c in items], "total": total, "limit": limit, "offset": offset}

    @get("/{conversation_id:str}", summary="One conversation with its segments")
    async def get_conversation(self, services: Services, uid: str, conversation_id: str) -> dict[str, Any]:
        """The conversation, 404 if it is not the caller's."""
        return (await services.storage.store.get(uid, conversation_id)).to_omi()

    @post("/{conversation_id:str}/close", summary="Close an in-progress conversation now", status_code=200)
    async def close_conversation(self, services: Services, uid: str, conversation_id: str) -> dict[str, Any]:
        """Close it as the silence timeout would; a completed one is returned unchanged."""
        conversation = await services.storage.store.get(uid, conversation_id)
        if conversation.status == "in_progress":
            closed = await services.conversations.close(uid, conversation_id)
            if closed is None:
                raise NotFoundError(f"conversation {conversation_id} had no speech and was removed")
            conversation = closed
        return conversation.to_omi()

    @patch("/{conversation_id:str}/speakers", summary="Relabel a speaker across one conversation")
    async def relabel_speaker(
        self, services: Services, uid: str, conversation_id: str, data: SpeakerRelabel
    ) -> dict[str, Any]:
        """Name one speaker (or mark them as the wearer) in every segment of the conversation.

        The stored segments change, and a client streaming this conversation receives them again.
        """
        from ingest.diarize.tracker import Identity
        from ingest.identity import name_speaker

        conversation = await services.storage.store.get(uid, conversation_id)
        if not any(s.speaker_id == data.speaker_id for s in conversation.segments):
            raise NotFoundError(f"conversation {conversation_id} has no speaker {data.speaker_id}")
        if data.is_user:
            identity = Identity(person_id=None, name="me", is_user=True)
        else:
            if not data.name:
                raise ValidationException(detail="give the speaker's `name`, or `is_user: true` for the wearer")
            try:
                name = clean_name(data.name)
            except ValueError as exc:
                raise ValidationException(detail=str(exc)) from exc
            profile = next(
                (
                    p
                    for p in await services.storage.speakers.list(uid)
                    if not p.is_user and p.name.casefold() == name.casefold()
                ),
                None,
            )
            identity = Identity(
                person_id=data.person_id or (profile.id if profile else None),
                name=name,
                is_user=False,
                profile_id=profile.id if profile else None,
            )
        if services.pipeline.live_speakers is not None:
            current = await services.conversations.current(uid)
            if current is not None and current.id == conversation_id:
                services.pipeline.live_speakers.tracker(uid).identify(data.speaker_id, identity)
        await services.conversations.relabel(
            uid,
            conversation_id,
            name_speaker(data.speaker_id, identity),
        )
        return (await services.storage.store.get(uid, conversation_id)).to_omi()

    @delete("/{conversation_id:str}", summary="Delete a conversation and its transcript")
    async def delete_conversation(self, services: Services, uid: str, conversation_id: str) -> None:
        """Delete it for good."""
        await services.conversations.forget(uid, conversation_id)


class SpeakerRelabel(msgspec.Struct):
    """Who one speaker of a conversation is."""

    speaker_id: Annotated[int, msgspec.Meta(ge=0, description="The speaker to relabel (`speaker_id` of its segments).")]
    name: Annotated[
        str | None,
        msgspec.Meta(description="Their name; a voice profile of that name gives its id as `person_id`."),
    ] = None
    is_user: Annotated[bool, msgspec.Meta(description="`true`: the speaker is the wearer (reads `me`).")] = False
    person_id: Annotated[str | None, msgspec.Meta(description="A person id to record on the segments.")] = None
