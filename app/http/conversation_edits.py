"""Edits of a conversation, as the OMI app makes them: its title, a star, a segment's words, who spoke.

Every edit that changes what was said or who said it is stored and queued for the sinks, so the
Letta agent and the memory index hold the edited conversation; a client streaming the conversation
receives the changed segments again.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, patch, post
from litestar.exceptions import ValidationException
from litestar.params import Parameter

from app.service.services import Services
from core.errors import NotFoundError
from core.segments import TranscriptSegment
from memory.store.voice_profiles import clean_name

__all__ = ["AssignSegments", "ConversationEditController", "SegmentText", "SpeakerRelabel"]

MAX_TITLE_CHARS = 500
MAX_SEGMENT_CHARS = 10_000
OK = {"status": "Ok"}


class SegmentText(msgspec.Struct):
    """New words for one segment."""

    segment_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SEGMENT_CHARS)]


class AssignSegments(msgspec.Struct):
    """Who said some segments: the wearer (``is_user``, value ``"true"``) or a person of ``/v1/users/people``."""

    segment_ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=10_000)]
    assign_type: Literal["is_user", "person_id"]
    value: Annotated[
        str | None,
        msgspec.Meta(description='`"true"` for the wearer; a person id; null (or `"null"`) to un-assign.'),
    ] = None


class SpeakerRelabel(msgspec.Struct):
    """Who one speaker of a conversation is."""

    speaker_id: Annotated[int, msgspec.Meta(ge=0, description="The speaker to relabel (`speaker_id` of its segments).")]
    name: Annotated[
        str | None,
        msgspec.Meta(description="Their name; a voice profile of that name gives its id as `person_id`."),
    ] = None
    is_user: Annotated[bool, msgspec.Meta(description="`true`: the speaker is the wearer (reads `me`).")] = False
    person_id: Annotated[str | None, msgspec.Meta(description="A person id to record on the segments.")] = None


class ConversationEditController(Controller):
    """Edits of the caller's conversations."""

    path = "/v1/conversations"
    tags = ["conversations"]

    @patch("/{conversation_id:str}/title", summary="Rename a conversation")
    async def set_title(
        self,
        services: Services,
        uid: str,
        conversation_id: str,
        title: Annotated[str, Parameter(max_length=MAX_TITLE_CHARS, description="The new title.")],
    ) -> dict[str, str]:
        """Set the summary's title (``?title=``, as the app sends it); the agent sees the new title."""
        await services.storage.store.set_flags(uid, conversation_id, title=title.strip())
        return OK

    @patch("/{conversation_id:str}/starred", summary="Star a conversation, or take its star away")
    async def set_starred(self, services: Services, uid: str, conversation_id: str, starred: bool) -> dict[str, str]:
        """``?starred=true|false``; ``GET /v1/conversations?starred=true`` lists the starred ones."""
        await services.storage.store.set_flags(uid, conversation_id, starred=starred)
        return OK

    @patch("/{conversation_id:str}/segments/text", summary="Correct the words of one segment")
    async def set_segment_text(
        self, services: Services, uid: str, conversation_id: str, data: SegmentText
    ) -> dict[str, str]:
        """Replace a segment's text; 404 if the conversation has no such segment."""
        conversation = await services.storage.store.get(uid, conversation_id)
        if not any(s.id == data.segment_id for s in conversation.segments):
            raise NotFoundError(f"conversation {conversation_id} has no segment {data.segment_id}")

        def change(segment: TranscriptSegment) -> TranscriptSegment:
            return msgspec.structs.replace(segment, text=data.text) if segment.id == data.segment_id else segment

        await services.conversations.relabel(uid, conversation_id, change)
        return OK

    @patch("/{conversation_id:str}/segments/assign-bulk", summary="Say who said some segments")
    async def assign_segments(
        self, services: Services, uid: str, conversation_id: str, data: AssignSegments
    ) -> dict[str, Any]:
        """Attribute the listed segments to the wearer or to a person (or to nobody); the conversation.

        Ids not in the conversation are skipped. In the conversation in progress, a speaker whose
        every segment is listed is that person from now on, and their voice so far goes into the
        person's voice profile.
        """
        from ingest.diarize.tracker import Identity
        from ingest.identity import apply_identity

        value = None if data.value in (None, "", "null") else data.value
        identity: Identity | None
        if data.assign_type == "is_user":
            identity = Identity(person_id=None, name="me", is_user=True) if value not in (None, "false") else None
        elif value is None:
            identity = None
        else:
            person = await services.storage.speakers.get(uid, value)  # 404 for anyone not in the people list
            if person.is_user:
                raise NotFoundError(f"person {value} not found")
            identity = Identity(person_id=person.id, name=person.name, is_user=False, profile_id=person.id)
        conversation = await services.storage.store.get(uid, conversation_id)
        chosen = set(data.segment_ids)
        live = services.pipeline.live_speakers
        current = await services.conversations.current(uid)
        if live is not None and identity is not None and current is not None and current.id == conversation_id:
            speakers = {s.speaker_id for s in conversation.segments if s.id in chosen}
            for speaker in sorted(speakers):
                if all(s.id in chosen for s in conversation.segments if s.speaker_id == speaker):
                    who = "user" if identity.is_user else str(identity.person_id)
                    await live.assign(uid, speaker, person_id=who, person_name=identity.name)

        def change(segment: TranscriptSegment) -> TranscriptSegment:
            if segment.id not in chosen:
                return segment
            return apply_identity(segment, segment.speaker_id, identity)

        await services.conversations.relabel(uid, conversation_id, change)
        return (await services.storage.store.get(uid, conversation_id)).to_omi()

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
        await services.conversations.relabel(uid, conversation_id, name_speaker(data.speaker_id, identity))
        return (await services.storage.store.get(uid, conversation_id)).to_omi()

    @post(
        "/{conversation_id:str}/reprocess",
        summary="Deliver a conversation to the agent and the index again",
        status_code=200,
    )
    async def reprocess(
        self,
        services: Services,
        uid: str,
        conversation_id: str,
        app_id: Annotated[str | None, Parameter(description="Ignored: there are no apps here.")] = None,
    ) -> dict[str, Any]:
        """Queue the conversation for every sink again (they change only what differs); the conversation."""
        store = services.storage.store
        conversation = await store.get(uid, conversation_id)
        if store.sinks:
            await store.requeue(uid, conversation_id, store.sinks)
        return conversation.to_omi()
