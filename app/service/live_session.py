"""One device's live audio: the one place a stream of a user's speech becomes stored, announced turns.

A :class:`LiveSession` owns, for one user, everything between the first frame and the last:

- the **lease** on the user's in-progress conversation (another worker the device streamed to
  before lets go first), renewed while it lasts;
- **resume**: the in-progress conversation continues, with the speaker labels its last worker
  shared through Redis;
- the **stream**: voice activity and local speech-to-text (:class:`~ingest.stream.LiveStream`), or
  a streaming service (:class:`~ingest.relay.RelayStream`, ``STT_BACKEND=deepgram``);
- the **sink** of its segments: speakers **recognised** from voice profiles, final segments
  **stored** in the conversation, partial ones previewed, and what changed **published** to the
  device (``send``) and the user's live pages.

The WebSocket ``/v4/listen``, the OMI cloud's ``audio-bytes`` webhook and offline sync all drive
one; none of them builds a stream of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from app.service.live_hub import LiveEvent
from app.service.pipeline import vad_params
from core.errors import SpeechToTextError, StorageFullError
from core.segments import AbsoluteSegment
from ingest.diarize.tracker import Identity
from ingest.identity import identity_fields, name_speaker
from ingest.relay import RelayStream
from ingest.stream import LiveStream

if TYPE_CHECKING:
    from app.service.services import Services
    from core.conversation import Conversation
    from ingest.decode import FrameDecoder

__all__ = ["LiveSession", "Send"]

log = logging.getLogger(__name__)

Send = Callable[[Any], Awaitable[None]]
"""Sends one OMI event (a JSON-ready value) to the device."""

WEARER = Identity(person_id=None, name="me", is_user=True)
LEASE_WAIT_S = 10.0  # how long a new stream waits for the worker that held the user's stream before


class LiveSession:
    """One user's live audio from one device (see the module docstring).

    Call :meth:`open`, then :meth:`feed` per frame, and :meth:`close` at the end, also when the
    device is gone: whatever was heard is transcribed and stored.

    Args:
        send: where the device's events go (segments, speaker suggestions, conversation events);
            None for a device that is not listening (a webhook).
        on_storage_full: told, once per failure, that segments could not be stored for a full disk.
        wearer_only: every speaker is the wearer (the app's onboarding); their voice goes into the
            wearer's profile when the session closes.
        on_final: told of each batch of final segments once they are stored.
    """

    def __init__(
        self,
        services: Services,
        uid: str,
        decoder: FrameDecoder,
        *,
        language: str,
        source: str,
        timeout_s: int,
        send: Send | None = None,
        on_storage_full: Callable[[StorageFullError], Awaitable[None]] | None = None,
        wearer_only: bool = False,
        on_final: Callable[[list[AbsoluteSegment]], Awaitable[None]] | None = None,
    ) -> None:
        self.services = services
        self.uid = uid
        self.decoder = decoder
        self.language = language
        self.source = source
        self.timeout_s = timeout_s
        self.send = send
        self.on_storage_full = on_storage_full
        self.wearer_only = wearer_only
        self.on_final = on_final
        self._wearer_speakers: set[int] = set()  # wearer_only: the session speakers heard
        self.stt_failed = asyncio.Event()  # the speech-to-text service refused the stream for good
        self.stt_error: SpeechToTextError | None = None
        self.stream: LiveStream | RelayStream | None = None
        self._previewed: set[str] = set()  # stored segments a partial was shown merged into
        self._unsubscribe: Callable[[], None] | None = None
        self._holder: asyncio.Task[None] | None = None
        self._open = False

    # --- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> Conversation | None:
        """Take the user's lease, resume their conversation and start the stream.

        Returns the conversation that resumes, if any.

        Raises:
            StorageFullError: the disk is full (nothing was opened).
            SpeechToTextError: the streaming service refused the stream (nothing stays open).
        """
        services = self.services
        uid = self.uid
        # Another worker may still hold this user's stream (a device that moved): wait for it to let go.
        await services.cluster.leases.acquire(uid, wait_s=min(services.settings.cluster.lease_ttl_s, LEASE_WAIT_S))
        try:
            resumed = await services.conversations.connect(uid, timeout_s=self.timeout_s)
        except BaseException:
            await services.cluster.leases.release(uid)
            raise
        self._open = True
        if self.send is not None:
            self._unsubscribe = services.conversations.subscribe(uid, self.send)
        live = services.pipeline.live_speakers
        if live is not None and resumed is not None:
            redis = services.cluster.redis
            shared = await redis.load_speakers(resumed.id) if redis is not None else None
            live.resume(uid, resumed.segments, shared)
        self.stream = self._make_stream(resumed.finished_at if resumed else 0.0)
        if isinstance(self.stream, RelayStream):
            await self._send(
                {"type": "service_status", "status": "stt_initiating", "status_text": "STT Service Starting"}
            )
            try:
                await self.stream.start()
            except SpeechToTextError:
                await self.close()
                raise
        self._holder = asyncio.create_task(self._hold_lease(), name="lease-holder")
        return resumed

    def feed(self, frame: bytes) -> None:
        """One frame of audio.

        Raises:
            DecodeError: the frame is not valid for the codec (the session stays usable).
        """
        assert self.stream is not None, "open() the session first"
        self.services.health.heard(self.uid)
        self.stream.feed(frame)

    async def close(self) -> None:
        """Transcribe and store what was heard, share the speaker state, and let go of the lease."""
        if not self._open:
            return
        self._open = False
        if self._holder is not None:
            self._holder.cancel()
            await asyncio.gather(self._holder, return_exceptions=True)
        try:
            if self.stream is not None:
                async with self.services.conversations.flushing(self.uid):
                    await self.stream.finish()
            await self._learn_wearer()
        finally:
            if self._unsubscribe is not None:
                self._unsubscribe()
            await self._let_go()

    async def _learn_wearer(self) -> None:
        """``wearer_only``: the voices heard go into the wearer's profile, as a ``speaker_assigned`` would."""
        live = self.services.pipeline.live_speakers
        if live is None:
            return
        for speaker_id in sorted(self._wearer_speakers):
            try:
                await live.assign(self.uid, speaker_id, person_id="user", person_name="")
            except Exception as exc:
                log.warning("could not learn the wearer's voice (%s)", type(exc).__name__)

    def _make_stream(self, origin_floor: float) -> LiveStream | RelayStream:
        services = self.services
        settings = services.settings
        pipeline = services.pipeline
        live = pipeline.live_speakers
        uid = self.uid
        tracker = (lambda: live.tracker(uid)) if live is not None else (lambda: None)
        if pipeline.streaming is not None:
            return RelayStream(
                decoder=self.decoder,
                engine=pipeline.streaming,
                language=self.language,
                sink=self._sink,
                metrics=services.metrics,
                buffer_s=settings.asr.deepgram_buffer_s,
                reconnect_max_delay_s=settings.asr.deepgram_reconnect_max_delay_s,
                speakers=tracker,
                origin_floor=origin_floor,
                on_error=self._refused,
            )
        kept = pipeline.kept_speech
        return LiveStream(
            decoder=self.decoder,
            vad=pipeline.vad,
            params=vad_params(settings.stream),
            transcriber=pipeline.transcriber,
            language=self.language,
            sink=self._sink,
            max_queued_audio_s=settings.stream.max_queued_audio_s,
            speakers=tracker,
            origin_floor=origin_floor,
            keep=(lambda at, audio: kept.add(uid, at, audio)) if kept is not None else None,
        )

    async def _refused(self, exc: SpeechToTextError) -> None:
        self.stt_error = exc
        self.stt_failed.set()

    async def _send(self, payload: Any) -> None:
        if self.send is not None:
            await self.send(payload)

    # --- the lease -------------------------------------------------------------------------------

    async def _hold_lease(self) -> None:
        """While the stream lasts: renew the user's lease, and share their speaker state now and then."""
        services = self.services
        if not services.cluster.leases.shared:
            return
        every = services.settings.cluster.lease_ttl_s / 3
        while True:
            await asyncio.sleep(every)
            if not await services.cluster.leases.renew(self.uid):
                log.warning("another worker took over the stream of uid %s", self.uid)
            await self._share_speakers()

    async def _share_speakers(self) -> None:
        """Put the user's live speaker state in Redis, for the worker their device may move to."""
        services = self.services
        live = services.pipeline.live_speakers
        redis = services.cluster.redis
        if redis is None or live is None:
            return
        current = await services.conversations.current(self.uid)  # cached while the stream lasts
        state = live.snapshot(self.uid)
        if current is not None and state is not None:
            ttl = int(current.timeout_s + services.settings.cluster.lease_ttl_s)
            await redis.save_speakers(current.id, state, ttl)

    async def _let_go(self) -> None:
        """The stream ended: share the speaker state, forget the cached conversation, release the lease."""
        services = self.services
        try:
            if services.cluster.leases.shared:
                await self._share_speakers()
        except Exception as exc:
            log.warning("could not share the speaker state of uid %s (%s)", self.uid, type(exc).__name__)
        finally:
            services.conversations.disconnect(self.uid)
            await services.cluster.leases.release(self.uid)

    # --- segments --------------------------------------------------------------------------------

    async def _sink(self, segments: list[AbsoluteSegment], final: bool) -> None:
        """Where the stream's segments go (see the module docstring)."""
        try:
            await self._store(segments, final)
        except StorageFullError as exc:
            if self.on_storage_full is not None:
                await self.on_storage_full(exc)
            raise  # the stream retries storing them for a while: freed space keeps them

    async def _store(self, segments: list[AbsoluteSegment], final: bool) -> None:
        services = self.services
        uid = self.uid
        live = services.pipeline.live_speakers
        conversations = services.conversations
        found: list[tuple[int, Identity]] = []
        if self.wearer_only:
            self._wearer_speakers.update(s.speaker_id for s in segments)
            segments = [_with_identity(s, WEARER) for s in segments]
        elif final and live is not None:
            found = await live.recognise(uid, {s.speaker_id for s in segments})
            if found:
                segments = [_with_identity(s, live.tracker(uid).identity(s.speaker_id)) for s in segments]
        if final:
            changed = await conversations.add(
                uid, segments, timeout_s=self.timeout_s, source=self.source, language=self.language
            )
            if self._previewed:
                # A partial may have been shown merged into a stored segment that the final did not
                # join (another speaker, say): send that segment as stored again.
                current = await conversations.current(uid)
                stored = {seg.id: seg for seg in current.segments} if current else {}
                sent = {seg.id for seg in changed}
                changed += [stored[i] for i in self._previewed if i in stored and i not in sent]
                self._previewed.clear()
        else:
            changed = await conversations.preview(uid, segments)
            self._previewed.update(seg.id for seg in changed if seg.id not in {a.id for a in segments})
        if changed:
            payload = [msgspec.to_builtins(s) for s in changed]
            await self._send(payload)
            services.live.publish(uid, LiveEvent("segments", payload))
        for speaker_id, identity in found:
            await self._announce(speaker_id, identity, segments)
        if final and self.on_final is not None:
            await self.on_final(segments)

    async def _announce(self, speaker_id: int, identity: Identity, segments: list[AbsoluteSegment]) -> None:
        """``speaker_label_suggestion`` for a voice match, and the speaker's earlier segments relabelled."""
        first = next(s for s in segments if s.speaker_id == speaker_id)
        await self._send(
            {
                "type": "speaker_label_suggestion",
                "speaker_id": speaker_id,
                "person_id": "user" if identity.is_user else (identity.person_id or ""),
                "person_name": identity.name,
                "segment_id": first.id,
            }
        )
        current = await self.services.conversations.current(self.uid)
        if current is not None:
            await self.services.conversations.relabel(self.uid, current.id, name_speaker(speaker_id, identity))

    # --- speaker_assigned ------------------------------------------------------------------------

    async def assign_speaker(self, speaker_id: int, person_id: str, name: str, segment_ids: list[str]) -> bool:
        """OMI ``speaker_assigned``: name a session speaker now and in the rest of the conversation.

        Accepted (True) when diarization is on and at least one listed segment is in the user's
        in-progress conversation, as in OMI. Stored segments of that speaker are relabelled and
        re-sent; the person's voice profile learns from the speaker's speech.
        """
        services = self.services
        live = services.pipeline.live_speakers
        if live is None:
            return False
        current = await services.conversations.current(self.uid)
        if current is None or not {s.id for s in current.segments} & set(segment_ids):
            return False
        identity = await live.assign(self.uid, speaker_id, person_id=person_id, person_name=name)
        await services.conversations.relabel(self.uid, current.id, name_speaker(speaker_id, identity))
        return True


def _with_identity(segment: AbsoluteSegment, identity: Identity | None) -> AbsoluteSegment:
    if identity is None:
        return segment
    return msgspec.structs.replace(segment, **identity_fields(segment.speaker_id, identity))
