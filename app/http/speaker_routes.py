"""The caller's voice profiles: enrolled from recordings, listed, renamed and deleted."""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.params import Body
from litestar.response import Response

from app.service.services import Services
from core.errors import (
    DecodeError,
    NotEnoughSpeechError,
    UnsupportedAudioError,
)
from memory.store.voice_profiles import MAX_NAME_CHARS, clean_name

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ingest.diarize.embedded import EmbeddedDiarizer


__all__ = ["SpeakerController", "bad_form_text", "embed_upload"]

log = logging.getLogger(__name__)


MAX_ENROLL_UPLOAD_BYTES = 50 * 1024 * 1024


class EnrollForm(msgspec.Struct):
    """The multipart form of a voice enrollment."""

    file: Annotated[
        UploadFile | None,
        msgspec.Meta(description="A recording of one person speaking (WAV, FLAC, MP3 or Ogg), at least 2 s of speech."),
    ] = None
    name: Annotated[
        str | None, msgspec.Meta(description="The speaker's name. Enrolling a known name improves that profile.")
    ] = None
    me: Annotated[
        str | None, msgspec.Meta(description="`true` to enroll the wearer's own voice instead of a named speaker.")
    ] = None


class SpeakerRename(msgspec.Struct):
    """A new name for a voice profile."""

    name: Annotated[str, msgspec.Meta(description=f"The new name, 1 to {MAX_NAME_CHARS} characters.")]


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def _enroll_target(form: EnrollForm) -> tuple[str | None, bool]:
    """``(name, is_user)`` from the form: exactly one of ``name`` and ``me=true``; 400 otherwise."""
    me = (form.me or "").strip().lower()
    if me not in _TRUE + _FALSE:
        raise ValidationException(detail=f"me must be true or false, not {form.me!r}")
    is_user = me in _TRUE
    if form.name is not None and is_user:
        raise ValidationException(detail="give either a name or me=true, not both")
    if form.name is None and not is_user:
        raise ValidationException(
            detail="say whose voice this is: the form field 'name', or me=true for the wearer's own voice"
        )
    return (_valid_name(form.name) if form.name is not None else None), is_user


def _valid_name(name: str) -> str:
    try:
        return clean_name(name)
    except ValueError as exc:
        raise ValidationException(detail=str(exc)) from exc


def embed_upload(content: bytes, suffix: str, voices: EmbeddedDiarizer) -> tuple[NDArray[np.float32], float]:
    """Decode an uploaded recording and embed its speech (blocking)."""
    from ingest.diarize.enroll import load_enrollment_audio, voice_embedding

    with tempfile.TemporaryDirectory(prefix="omi-letta-enroll-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(content)
        audio = load_enrollment_audio(path)
    return voice_embedding(audio, diarizer=voices)


def bad_form_text(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """400 for a multipart form field that is not text in the charset it names (UTF-8 unless it names one).

    Litestar decodes the fields before the handler runs and lets the decoding error through, which
    would be a 500. Any other ``LookupError`` (a ``KeyError``, say) is ours: a 500, logged.
    """
    if isinstance(exc, UnicodeDecodeError) or (type(exc) is LookupError and str(exc).startswith("unknown encoding")):
        detail = "a form field is not text in the charset it names (UTF-8 unless it names one); give files a filename"
        return Response({"status_code": 400, "detail": detail}, status_code=400)
    log.error("%s %s failed", request.method, request.scope.get("path_template", ""), exc_info=exc)
    return Response({"status_code": 500, "detail": "Internal Server Error"}, status_code=500)


class SpeakerController(Controller):
    """The caller's voice profiles: who conversation speakers are recognised as."""

    path = "/v1/speakers"
    tags = ["speakers"]
    exception_handlers = {UnicodeDecodeError: bad_form_text, LookupError: bad_form_text}

    @post(
        "/enroll",
        summary="Enroll a voice from a recording",
        status_code=201,
        request_max_body_size=MAX_ENROLL_UPLOAD_BYTES,
    )
    async def enroll(
        self,
        services: Services,
        uid: str,
        data: Annotated[EnrollForm, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> dict[str, Any]:
        """Build a voice profile from a recording of one person (multipart field ``file``).

        Name the speaker with ``name``, or send ``me=true`` for the wearer. Enrolling a name that
        exists (in any case), or the wearer again, improves that profile instead of adding one.
        The upload may be up to 50 MiB and 30 minutes long; 400 if it is not audio or has under 2 s
        of speech.
        """
        name, is_user = _enroll_target(data)
        if data.file is None:
            raise ValidationException(detail="send the recording in the multipart form field 'file'")
        filename = data.file.filename or "upload"
        content = await data.file.read()
        if not content:
            raise ValidationException(detail=f"the uploaded file {filename!r} is empty")
        suffix = "".join(re.findall(r"[A-Za-z0-9]", Path(filename).suffix))[:8]
        try:
            embedding, seconds = await asyncio.to_thread(
                embed_upload, content, f".{suffix}" if suffix else "", services.pipeline.voices
            )
        except DecodeError as exc:
            raise ValidationException(
                detail=f"the uploaded file {filename!r} is not audio we can read; send WAV, FLAC, MP3 or Ogg"
            ) from exc
        except (NotEnoughSpeechError, UnsupportedAudioError) as exc:
            raise ValidationException(detail=exc.detail) from exc
        profile = await services.storage.speakers.enroll(
            uid, name=name, is_user=is_user, embedding=embedding, seconds=seconds
        )
        return profile.to_api()

    @get("/", summary="List voice profiles")
    async def list_speakers(self, services: Services, uid: str) -> dict[str, Any]:
        """The caller's voice profiles, the wearer's first, then by name."""
        return {"items": [p.to_api() for p in await services.storage.speakers.list(uid)]}

    @get("/{speaker_id:str}", summary="One voice profile")
    async def get_speaker(self, services: Services, uid: str, speaker_id: str) -> dict[str, Any]:
        """The profile, 404 if it is not the caller's."""
        return (await services.storage.speakers.get(uid, speaker_id)).to_api()

    @patch("/{speaker_id:str}", summary="Rename a voice profile")
    async def rename_speaker(
        self, services: Services, uid: str, speaker_id: str, data: SpeakerRename
    ) -> dict[str, Any]:
        """Give the profile a new name; 409 if another of the caller's profiles has it."""
        return (await services.storage.speakers.rename(uid, speaker_id, _valid_name(data.name))).to_api()

    @delete("/{speaker_id:str}", summary="Delete a voice profile")
    async def delete_speaker(self, services: Services, uid: str, speaker_id: str) -> None:
        """Forget the voice; its speakers are no longer recognised."""
        await services.storage.speakers.delete(uid, speaker_id)
