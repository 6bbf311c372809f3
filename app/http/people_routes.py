"""The OMI app's speech profile and people, served by our voice profiles.

The wearer's profile (``me``) is the app's *speech profile*: ``POST /v3/upload-audio`` enrolls it
from the recording the app makes during onboarding. Every other profile is one of the app's
*people*, whose id is the ``person_id`` of the segments they said. A person named in the app before
their voice was heard has a profile with no voice yet; assigning segments to them in a conversation
in progress, or enrolling their name, gives it one.
"""

from __future__ import annotations

import asyncio
import io
import wave
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.params import Body, Parameter

from app.http.speaker_routes import MAX_ENROLL_UPLOAD_BYTES, bad_form_text, embed_upload
from app.service.services import Services
from core.conversation import iso
from core.errors import DecodeError, NotEnoughSpeechError, NotFoundError, UnsupportedAudioError
from memory.store.voice_profiles import SpeakerProfile, clean_name

__all__ = ["PeopleController", "SpeechProfileController", "person"]

MIN_PROFILE_S = 5.0
MAX_PROFILE_S = 120.0
PROFILE_RATE = 16_000
MIN_PERSON_CHARS = 2
MAX_PERSON_CHARS = 40


def person(profile: SpeakerProfile) -> dict[str, Any]:
    """A voice profile as the app's ``Person``."""
    return {
        "id": profile.id,
        "name": profile.name,
        "created_at": iso(profile.created_at),
        "updated_at": iso(profile.updated_at),
        "speech_samples": [],
        "speech_sample_transcripts": None,
        "speech_samples_version": 3,
    }


class NewPerson(msgspec.Struct):
    """A person to add to the people list."""

    name: Annotated[str, msgspec.Meta(min_length=MIN_PERSON_CHARS, max_length=MAX_PERSON_CHARS)]


class ProfileForm(msgspec.Struct):
    """The app's speech-profile upload."""

    file: Annotated[UploadFile | None, msgspec.Meta(description="A 16 kHz WAV of the wearer, 5 to 120 s.")] = None


def _wav_seconds(content: bytes) -> float:
    """The length of a 16 kHz WAV; 400 naming what is wrong with any other upload."""
    try:
        with wave.open(io.BytesIO(content)) as wav:
            rate, frames = wav.getframerate(), wav.getnframes()
    except (wave.Error, EOFError) as exc:
        raise ValidationException(detail=f"the upload is not a WAV file ({exc})") from exc
    if rate != PROFILE_RATE:
        raise ValidationException(detail=f"Invalid codec, must be opus 16khz: the WAV is {rate} Hz, not 16000")
    return frames / rate


class SpeechProfileController(Controller):
    """The wearer's voice, as the app's speech profile."""

    tags = ["speech profile"]
    exception_handlers = {UnicodeDecodeError: bad_form_text, LookupError: bad_form_text}

    @get("/v3/speech-profile", summary="Whether the wearer's voice is known")
    async def has_profile(self, services: Services, uid: str) -> dict[str, bool]:
        """``{has_profile}``: true once the wearer's voice profile holds speech."""
        profiles = await services.storage.speakers.list(uid)
        return {"has_profile": any(p.is_user and p.has_voice for p in profiles)}

    @get("/v4/speech-profile", summary="Where the speech profile's recording is (never kept here)")
    async def profile_url(self, services: Services, uid: str) -> dict[str, None]:
        """``{url: null}``: only the voice's embedding is kept, never the recording."""
        return {"url": None}

    @post(
        "/v3/upload-audio",
        summary="Enroll the wearer's voice from the app's recording",
        status_code=200,
        request_max_body_size=MAX_ENROLL_UPLOAD_BYTES,
    )
    async def upload_profile(
        self,
        services: Services,
        uid: str,
        data: Annotated[ProfileForm, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> dict[str, Any]:
        """Fold the recording (multipart field ``file``, a 16 kHz WAV of 5 to 120 s) into the wearer's profile.

        400 says why a recording is refused: not a WAV, another rate, too short or long, no speech.
        """
        if data.file is None:
            raise ValidationException(detail="send the recording in the multipart form field 'file'")
        content = await data.file.read()
        seconds = _wav_seconds(content)
        if not MIN_PROFILE_S <= seconds <= MAX_PROFILE_S:
            raise ValidationException(
                detail=f"the recording is {seconds:.1f} s long; a speech profile needs 5 to 120 s of the wearer"
            )
        try:
            embedding, speech = await asyncio.to_thread(embed_upload, content, ".wav", services.pipeline.voices)
        except DecodeError as exc:
            raise ValidationException(detail="the upload is not audio we can read") from exc
        except (NotEnoughSpeechError, UnsupportedAudioError) as exc:
            raise ValidationException(detail=f"Audio is empty: {exc.detail}") from exc
        await services.storage.speakers.enroll(uid, name=None, is_user=True, embedding=embedding, seconds=speech)
        return {"url": None}


class PeopleController(Controller):
    """The people the wearer talks to: every voice profile but the wearer's."""

    path = "/v1/users/people"
    tags = ["people"]

    @get("/", summary="The people list")
    async def list_people(
        self,
        services: Services,
        uid: str,
        include_speech_samples: Annotated[bool, Parameter(description="Ignored: no recordings are kept.")] = False,
    ) -> list[dict[str, Any]]:
        """Every person as the app's ``Person``, by name."""
        return [person(p) for p in await services.storage.speakers.list(uid) if not p.is_user]

    @post("/", summary="Add a person (or find them by name)", status_code=200)
    async def add_person(self, services: Services, uid: str, data: NewPerson) -> dict[str, Any]:
        """The person called ``name`` (2 to 40 characters, any case), made if new; their voice comes later."""
        try:
            name = clean_name(data.name)
        except ValueError as exc:
            raise ValidationException(detail=str(exc)) from exc
        if len(name) < MIN_PERSON_CHARS:
            raise ValidationException(detail=f"a name has at least {MIN_PERSON_CHARS} characters")
        profile = await services.storage.speakers.add_person(uid, name)
        if profile.is_user:
            raise ValidationException(detail=f"{name!r} is the wearer's own profile; choose another name")
        return person(profile)

    @get("/{person_id:str}", summary="One person")
    async def get_person(
        self,
        services: Services,
        uid: str,
        person_id: str,
        include_speech_samples: Annotated[bool, Parameter(description="Ignored.")] = False,
    ) -> dict[str, Any]:
        """The person; 404 if they are not on the caller's list."""
        return person(await _person(services, uid, person_id))

    @patch("/{person_id:str}/name", summary="Rename a person")
    async def rename_person(
        self,
        services: Services,
        uid: str,
        person_id: str,
        value: Annotated[str, Parameter(description="The new name (`?value=`, as the app sends it).")],
    ) -> dict[str, str]:
        """Rename them; 409 if another person has that name."""
        await _person(services, uid, person_id)
        try:
            await services.storage.speakers.rename(uid, person_id, value)
        except ValueError as exc:
            raise ValidationException(detail=str(exc)) from exc
        return {"status": "ok"}

    @delete("/{person_id:str}", summary="Remove a person and their voice")
    async def delete_person(self, services: Services, uid: str, person_id: str) -> None:
        """Forget them (204); their segments keep the name they had."""
        await _person(services, uid, person_id)
        await services.storage.speakers.delete(uid, person_id)


async def _person(services: Services, uid: str, person_id: str) -> SpeakerProfile:
    profile = await services.storage.speakers.get(uid, person_id)
    if profile.is_user:
        raise NotFoundError(f"person {person_id} not found")
    return profile
