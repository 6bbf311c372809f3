"""The ingest stages, loaded once at startup: voice activity, speech-to-text, diarization and live speaker labels."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from app.settings import StreamSettings
from core.metrics import Metrics
from ingest.asr import SpeechToText, StreamingSpeechToText, load_asr, load_refine_asr, load_streaming
from ingest.diarize import Diarizer, load_diarizer, load_embedded
from ingest.diarize.embedded import EmbeddedDiarizer
from ingest.identity import LiveSpeakers, VoiceProfiles
from ingest.ingest_settings import AsrSettings, DiarizationSettings
from ingest.refine import KeptSpeech, Refiner, TextRefiner, chain
from ingest.stream import Transcriber
from ingest.vad import SileroVad, VadParams, load_vad

__all__ = ["Pipeline", "vad_params"]


@dataclass
class Pipeline:
    """What turns audio into speaker-attributed segments, shared by every stream, file and upload."""

    diarization: DiarizationSettings
    vad: SileroVad
    transcriber: Transcriber
    diarizer: Diarizer  # whole recordings (files, the close-time pass of pyannote)
    live_speakers: LiveSpeakers | None  # None when DIARIZER=none
    refiner: Refiner | None = None  # runs as a conversation closes: speakers re-clustered, text refined
    streaming: StreamingSpeechToText | None = None  # live streams go to this service (STT_BACKEND=deepgram)
    kept_speech: KeptSpeech | None = None  # live speech held for the refinement pass at close (STT_REFINE_BACKEND)
    _voices: EmbeddedDiarizer | None = None

    @property
    def voices(self) -> EmbeddedDiarizer:
        """The embedded diarizer that makes voice embeddings (live labels, voice profiles); loaded on first use."""
        if self._voices is None:
            self._voices = load_embedded(self.diarization, self.vad)
        return self._voices

    @property
    def live_engine(self) -> SpeechToText | StreamingSpeechToText:
        """The engine live streams use."""
        return self.streaming or self.transcriber.asr

    @classmethod
    async def load(
        cls,
        asr_settings: AsrSettings,
        diarization: DiarizationSettings,
        profiles: VoiceProfiles,
        metrics: Metrics,
        *,
        asr: SpeechToText | None = None,
        diarizer: Diarizer | None = None,
    ) -> Pipeline:
        """Load the models (``asr`` and ``diarizer`` replace the configured ones, as tests do)."""
        vad = load_vad()
        # The speaker encoder (torch) loads beside the speech-to-text model; with DIARIZER=none it
        # waits until a voice is enrolled.
        loading = asyncio.to_thread(load_embedded, diarization, vad) if diarization.backend != "none" else None
        engine = asr if asr is not None else await asyncio.to_thread(load_asr, asr_settings)
        streaming = load_streaming(asr_settings)
        voices = await loading if loading else None
        live = (
            LiveSpeakers(
                voices,
                profiles,
                match_threshold=diarization.speaker_match_threshold,
                num_speakers=diarization.num_speakers or None,
            )
            if voices is not None
            else None
        )
        refiners: list[Refiner] = []
        if live is not None:
            refiners.append(lambda uid, c: live.refine(uid, c.segments, c.started_at))
        kept: KeptSpeech | None = None
        if asr_settings.refine_backend != "none":
            kept = KeptSpeech()
            refine_asr = await asyncio.to_thread(load_refine_asr, asr_settings)
            refiners.append(TextRefiner(refine_asr, kept, metrics=metrics))
        return cls(
            diarization,
            vad,
            Transcriber(engine, workers=asr_settings.workers, metrics=metrics),
            diarizer or load_diarizer(diarization, vad, voices),
            live,
            refiner=chain(*refiners) if refiners else None,
            streaming=streaming,
            kept_speech=kept,
            _voices=voices,
        )

    @property
    def name(self) -> str:
        """The engines, for the startup log line."""
        asr = self.transcriber.asr.name
        stt = f"{self.streaming.name} (live), {asr} (files)" if self.streaming else asr
        return f"speech-to-text {stt}, diarizer {self.diarizer.name}"

    def close(self) -> None:
        """Stop the transcription threads."""
        self.transcriber.close()


def vad_params(stream: StreamSettings) -> VadParams:
    """Endpointing tunables from the stream settings."""
    return VadParams(
        threshold=stream.vad_threshold,
        min_silence_ms=stream.vad_min_silence_ms,
        speech_pad_ms=stream.vad_speech_pad_ms,
        max_utterance_s=stream.max_utterance_s,
        partial_interval_s=stream.partial_interval_s,
    )
