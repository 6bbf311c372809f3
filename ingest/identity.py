"""Who is speaking: live speaker labels per user, voice-profile matching, and OMI's ``speaker_assigned``.

Each user's in-progress conversation has a :class:`~ingest.diarize.tracker.SpeakerTracker`. Final
utterances are labelled by it as they arrive; a speaker with enough speech is compared with the
user's voice profiles, and a match names the speaker (the wearer reads ``me``) and is announced
with a ``speaker_label_suggestion`` event. When the conversation closes its speakers are
re-clustered, matched again with all their speech, and the segments that changed are returned.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import numpy as np

from core.segments import TranscriptSegment, speaker_label, speaker_name
from ingest.diarize.tracker import Identity, SpeakerTracker, TimedSpan

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ingest.diarize.embedded import EmbeddedDiarizer

__all__ = [
    "LiveSpeakers",
    "VoiceProfile",
    "VoiceProfiles",
    "apply_identity",
    "identity_fields",
    "match_profiles",
    "name_speaker",
]

log = logging.getLogger(__name__)

MIN_MATCH_S = 3.0
"""Speech a speaker needs before their voice is compared with the profiles."""
RETRY_MATCH_S = 5.0
"""More speech after which an unmatched speaker is compared again."""


class VoiceProfile(Protocol):
    """A known voice: whose it is and its unit-length embedding (``memory.store.voice_profiles`` stores them)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def is_user(self) -> bool: ...
    @property
    def embedding(self) -> NDArray[np.float32]: ...


class VoiceProfiles(Protocol):
    """Where a user's voice profiles are kept: read, improved with more speech, or made."""

    async def list(self, uid: str) -> Sequence[VoiceProfile]:
        """The user's profiles."""
        ...

    async def absorb(self, uid: str, profile_id: str, embedding: NDArray[np.float32], seconds: float) -> VoiceProfile:
        """Fold ``seconds`` of a person's speech into their profile; returns the profile."""
        ...

    async def enroll(
        self, uid: str, *, name: str | None, is_user: bool, embedding: NDArray[np.float32], seconds: float
    ) -> VoiceProfile:
        """Make a profile, or improve the one of that name (or the wearer's); returns the profile."""
        ...


def match_profiles(
    centroids: dict[int, NDArray[np.float32]], profiles: Sequence[VoiceProfile], threshold: float
) -> dict[int, tuple[VoiceProfile, float]]:
    """One-to-one matching of conversation speakers to voice profiles above ``threshold``."""
    profiles = [p for p in profiles if p.embedding.size]  # a person named before their voice was heard
    if not centroids or not profiles:
        return {}
    from scipy.optimize import linear_sum_assignment

    speakers = list(centroids)
    sims = np.array([[float(centroids[s] @ p.embedding) for p in profiles] for s in speakers])
    rows, cols = linear_sum_assignment(sims, maximize=True)
    return {
        speakers[r]: (profiles[c], float(sims[r, c]))
        for r, c in zip(rows, cols, strict=True)
        if sims[r, c] >= threshold
    }


def identity_of(profile: VoiceProfile) -> Identity:
    """The identity a matched profile gives a speaker (the wearer has no ``person_id``, as in OMI)."""
    if profile.is_user:
        return Identity(person_id=None, name="me", is_user=True, profile_id=profile.id)
    return Identity(person_id=profile.id, name=profile.name, is_user=False, profile_id=profile.id)


def identity_fields(speaker_id: int, identity: Identity | None) -> dict[str, Any]:
    """The segment fields that say who ``speaker_id`` is: ``is_user``, ``person_id`` and ``speaker_name``."""
    return {
        "is_user": identity.is_user if identity else False,
        "person_id": identity.person_id if identity else None,
        "speaker_name": speaker_name(
            speaker_id, is_user=identity.is_user if identity else False, name=identity.name if identity else None
        ),
    }


def apply_identity(segment: TranscriptSegment, speaker_id: int, identity: Identity | None) -> TranscriptSegment:
    """``segment`` attributed to ``speaker_id`` and, when known, to who that is."""
    return msgspec.structs.replace(
        segment, speaker=speaker_label(speaker_id), speaker_id=speaker_id, **identity_fields(speaker_id, identity)
    )


def name_speaker(speaker_id: int, identity: Identity) -> Callable[[TranscriptSegment], TranscriptSegment]:
    """A change for :meth:`ConversationManager.relabel`: ``speaker_id``'s segments now say who they are."""
    return lambda s: apply_identity(s, speaker_id, identity) if s.speaker_id == speaker_id else s


@dataclass
class _UserState:
    tracker: SpeakerTracker
    tried_at_s: dict[int, float] = field(default_factory=dict)  # speech seconds at the last match attempt


class LiveSpeakers:
    """Speaker tracking of every user's in-progress conversation."""

    def __init__(
        self,
        diarizer: EmbeddedDiarizer,
        profiles: VoiceProfiles,
        *,
        match_threshold: float,
        live_threshold: float = 0.75,
        num_speakers: int | None = None,
    ) -> None:
        self.diarizer = diarizer
        self.profiles = profiles
        self.match_threshold = match_threshold
        self.live_threshold = live_threshold
        self.num_speakers = num_speakers
        self._users: dict[str, _UserState] = {}
        self._lock = threading.Lock()

    def tracker(self, uid: str) -> SpeakerTracker:
        """The tracker of the user's in-progress conversation (created on first use). Thread-safe."""
        with self._lock:
            state = self._users.get(uid)
            if state is None:
                state = _UserState(SpeakerTracker(self.diarizer, match_threshold=self.live_threshold))
                self._users[uid] = state
            return state.tracker

    def resume(self, uid: str, segments: list[TranscriptSegment], state: bytes | None = None) -> None:
        """A conversation resumes with no tracker here: continue from ``state`` (a :meth:`snapshot` taken by
        the worker it streamed to before), else (the service restarted) number new speakers after its own."""
        with self._lock:
            if state is not None:
                tracker = SpeakerTracker(self.diarizer, match_threshold=self.live_threshold)
                tracker.restore(state)
                self._users[uid] = _UserState(tracker)
            elif uid not in self._users and segments:
                first = max(s.speaker_id for s in segments) + 1
                tracker = SpeakerTracker(self.diarizer, match_threshold=self.live_threshold, first_id=first)
                self._users[uid] = _UserState(tracker)

    def snapshot(self, uid: str) -> bytes | None:
        """The user's live speaker state, for another worker to continue from (None when there is none)."""
        with self._lock:
            state = self._users.get(uid)
        return state.tracker.snapshot() if state else None

    def forget(self, uid: str) -> None:
        """The user's in-progress conversation was deleted: start afresh."""
        self.drop(uid)

    def drop(self, uid: str) -> SpeakerTracker | None:
        """Forget the user's tracker (their conversation closed or was deleted)."""
        with self._lock:
            state = self._users.pop(uid, None)
        return state.tracker if state else None

    async def recognise(self, uid: str, speakers: set[int]) -> list[tuple[int, Identity]]:
        """Compare unidentified ``speakers`` with enough speech to the user's profiles.

        Returns the speakers newly identified, which the tracker now remembers.
        """
        with self._lock:
            state = self._users.get(uid)
        if state is None:
            return []
        tracker = state.tracker
        candidates: dict[int, NDArray[np.float32]] = {}
        for s in speakers:
            if tracker.identity(s) is not None:
                continue
            centroid, seconds = tracker.centroid(s)
            if seconds < MIN_MATCH_S or seconds - state.tried_at_s.get(s, -RETRY_MATCH_S) < RETRY_MATCH_S:
                continue
            state.tried_at_s[s] = seconds
            candidates[s] = centroid
        if not candidates:
            return []
        taken = {i.profile_id for i in tracker.identities.values() if i.profile_id}
        profiles = [p for p in await self.profiles.list(uid) if p.id not in taken]
        found = []
        for s, (profile, similarity) in match_profiles(candidates, profiles, self.match_threshold).items():
            identity = identity_of(profile)
            tracker.identify(s, identity)
            log.info("speaker %d matched a voice profile (similarity %.2f)", s, similarity)
            found.append((s, identity))
        return found

    async def assign(self, uid: str, speaker_id: int, *, person_id: str, person_name: str) -> Identity:
        """OMI ``speaker_assigned``: ``speaker_id`` is this person (``person_id == "user"``: the wearer).

        The assignment holds for the rest of the conversation. The speaker's voice so far goes into
        the person's profile (created when they have none), so later conversations recognise them.
        """
        tracker = self.tracker(uid)
        is_user = person_id == "user"
        profiles = await self.profiles.list(uid)
        profile = next((p for p in profiles if p.is_user), None) if is_user else None
        if profile is None and not is_user:
            profile = next((p for p in profiles if p.id == person_id), None) or next(
                (p for p in profiles if person_name and p.name.casefold() == person_name.strip().casefold()), None
            )
        centroid, seconds = tracker.centroid(speaker_id)
        if seconds > 0:
            if profile is not None:
                profile = await self.profiles.absorb(uid, profile.id, centroid, seconds)
            elif is_user or person_name.strip():
                profile = await self.profiles.enroll(
                    uid, name=None if is_user else person_name, is_user=is_user, embedding=centroid, seconds=seconds
                )
        identity = Identity(
            person_id=None if is_user else person_id,
            name="me" if is_user else (person_name.strip() or (profile.name if profile else person_id)),
            is_user=is_user,
            profile_id=profile.id if profile else None,
        )
        tracker.identify(speaker_id, identity)
        return identity

    async def refine(self, uid: str, segments: list[TranscriptSegment], started_at: float) -> list[TranscriptSegment]:
        """Close-time pass over a conversation's segments; returns those whose speaker changed.

        ``started_at`` is the conversation's start (epoch s), to which segment times are relative.
        The user's tracker is dropped: the next speech starts a new conversation.
        """
        tracker = self.drop(uid)
        if tracker is None or not segments:
            return []
        spans = [TimedSpan(started_at + s.start, started_at + s.end) for s in segments]
        live = [s.speaker_id for s in segments]
        labels, centroids = await asyncio.to_thread(tracker.refine, spans, live, num_speakers=self.num_speakers)
        manual = dict(tracker.identities)
        unknown = {s: c for s, c in centroids.items() if s not in manual}
        taken = {i.profile_id for i in manual.values() if i.profile_id}
        profiles = [p for p in await self.profiles.list(uid) if p.id not in taken]
        identities: dict[int, Identity] = dict(manual)
        for s, (profile, _) in match_profiles(unknown, profiles, self.match_threshold).items():
            identities[s] = identity_of(profile)
        changed = []
        for segment, label in zip(segments, labels, strict=True):
            updated = apply_identity(segment, label, identities.get(label))
            if _attribution(updated) != _attribution(segment):
                changed.append(updated)
        return changed


def _attribution(s: TranscriptSegment) -> tuple[Any, ...]:
    return (s.speaker_id, s.is_user, s.person_id, s.speaker_name)
