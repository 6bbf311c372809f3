"""pyannote.audio speaker diarization (``DIARIZER=pyannote``), for users who have its weights.

Needs the extra (``pip install 'omi-letta[pyannote]'``) and a pipeline: ``PYANNOTE_PIPELINE`` is a
local directory or ``config.yaml``, or a hub name such as ``pyannote/speaker-diarization-3.1``.
Hub pipelines are gated: the account behind ``HF_TOKEN`` must have accepted their conditions (and
those of the models they use). pyannote.audio 3.x and 4.x are both supported: 3.x takes the token
as ``use_auth_token=`` and returns an ``Annotation``; 4.x takes ``token=`` and returns a
``DiarizeOutput`` whose ``speaker_diarization`` is the annotation.

The turns come from pyannote. The per-speaker embeddings are GE2E ones from our own encoder
(:mod:`ingest.diarize.encoder`), taken over each speaker's speech where nobody else speaks, so
that they compare with voice profiles enrolled under any backend; pyannote's own embeddings live
in another space and are not passed on.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import MissingDependencyError
from ingest.diarize.diarizer import Diarization, Diarizer, SpeakerCount, SpeakerTurn, solo_speech
from ingest.schema import SAMPLE_RATE

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ingest.diarize.embedded import EmbeddedDiarizer
    from ingest.diarize.encoder import VoiceEncoder
    from ingest.ingest_settings import DiarizationSettings

__all__ = ["PyannoteDiarizer", "load_pyannote", "pipeline_turns"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'omi-letta[pyannote]'"
EMBED_MAX_S = 60.0  # speech per speaker that goes into its embedding


def _import_pipeline_class() -> Any:
    """``pyannote.audio.Pipeline``, or a MissingDependencyError saying how to install it."""
    try:
        module = importlib.import_module("pyannote.audio")
    except (ImportError, OSError) as exc:  # OSError: a torchaudio that does not match torch
        raise MissingDependencyError(
            f"DIARIZER=pyannote needs pyannote.audio, which could not be imported ({exc}). "
            f"Install it with: {INSTALL_HINT}"
        ) from exc
    return module.Pipeline


def _is_local(source: str) -> bool:
    """Whether PYANNOTE_PIPELINE names a path rather than a hub pipeline (``owner/name[@rev]``)."""
    return (
        Path(source).expanduser().exists()
        or source.startswith(("/", ".", "~"))
        or source.endswith((".yaml", ".yml"))
        or source.count("/") != 1
    )


def _local_checkpoint(source: str, *, takes_directory: bool) -> str:
    """The path to hand to ``from_pretrained`` for a local pipeline, checked to exist."""
    path = Path(source).expanduser()
    if not path.exists():
        raise MissingDependencyError(
            f"PYANNOTE_PIPELINE={source}: no such file or directory. Set it to a pipeline directory, "
            "its config.yaml, or a hub name such as pyannote/speaker-diarization-3.1 (with HF_TOKEN)."
        )
    if path.is_dir():
        config = path / "config.yaml"
        if not config.is_file():
            raise MissingDependencyError(
                f"PYANNOTE_PIPELINE={source} is a directory without config.yaml: point it at a "
                "downloaded pyannote pipeline (the folder holding config.yaml) or at the file itself."
            )
        # pyannote 4 reads a whole pipeline folder; 3.x only a config file
        return str(path if takes_directory else config)
    return str(path)


def _device(requested: str) -> str:
    import torch

    cuda = torch.cuda.is_available()
    if requested == "auto":
        return "cuda" if cuda else "cpu"
    if requested == "cuda" and not cuda:
        raise MissingDependencyError(
            "PYANNOTE_DEVICE=cuda, but torch sees no CUDA device (is a CUDA build of torch installed?). "
            "Use PYANNOTE_DEVICE=auto or cpu."
        )
    return requested


def _load_pipeline(settings: DiarizationSettings) -> tuple[Any, str]:
    """The pyannote pipeline named by the settings, and a description of where it came from."""
    pipeline_class = _import_pipeline_class()
    params = inspect.signature(pipeline_class.from_pretrained).parameters
    token_kw = "token" if "token" in params else "use_auth_token"  # 4.x / 3.x
    source = settings.pyannote_pipeline.strip()
    token = settings.hf_token.strip()
    if not source:
        raise MissingDependencyError(
            "PYANNOTE_PIPELINE is empty: set it to a pipeline directory, its config.yaml, or a hub name "
            "such as pyannote/speaker-diarization-3.1 (with HF_TOKEN)."
        )

    if _is_local(source):
        checkpoint = _local_checkpoint(source, takes_directory=token_kw == "token")
        try:
            pipeline = pipeline_class.from_pretrained(checkpoint)
        except Exception as exc:  # a local config whose models are themselves gated hub names
            raise MissingDependencyError(
                f"pyannote could not load PYANNOTE_PIPELINE={source}: {type(exc).__name__}: {exc}. "
                "If its config.yaml names hub models, download them too and point the config at "
                "the local copies, or set HF_TOKEN."
            ) from exc
        if pipeline is None:
            raise MissingDependencyError(f"pyannote could not load PYANNOTE_PIPELINE={source} (it returned nothing).")
        return pipeline, checkpoint

    gated = (
        f"PYANNOTE_PIPELINE={source} is a gated hub pipeline: accept its conditions (and those of the "
        f"segmentation and embedding models it uses) on the hub with the account behind HF_TOKEN, or "
        f"set PYANNOTE_PIPELINE to a local copy (a directory or config.yaml)."
    )
    no_token = "" if token else "HF_TOKEN is not set and the pipeline is not in the local cache. "
    try:
        pipeline = pipeline_class.from_pretrained(source, **({token_kw: token} if token else {}))
    except Exception as exc:
        raise MissingDependencyError(
            f"pyannote could not fetch PYANNOTE_PIPELINE={source}: {type(exc).__name__}: {exc}. {no_token}{gated}"
        ) from exc
    if pipeline is None:  # 3.x prints the hub's refusal and returns None
        raise MissingDependencyError(f"pyannote could not fetch PYANNOTE_PIPELINE={source}. {no_token}{gated}")
    return pipeline, source


def pipeline_turns(output: Any) -> list[tuple[float, float, str]]:
    """(start, end, label) of every track of a pipeline's output, in time order.

    Accepts pyannote 4's ``DiarizeOutput`` (its ``speaker_diarization``, which keeps overlap),
    3.x's ``Annotation``, and the ``(annotation, embeddings)`` pair 3.x returns when asked for
    embeddings.
    """
    annotation = getattr(output, "speaker_diarization", None)
    if annotation is None:
        annotation = output[0] if isinstance(output, tuple) else output
    if not hasattr(annotation, "itertracks"):
        raise TypeError(f"unexpected pyannote pipeline output: {type(output).__name__}")
    tracks = [
        (float(segment.start), float(segment.end), str(label))
        for segment, _, label in annotation.itertracks(yield_label=True)
    ]
    return sorted(tracks, key=lambda t: (t[0], t[1]))


class PyannoteDiarizer(Diarizer):
    """A pyannote.audio pipeline behind the :class:`Diarizer` contract.

    Args:
        pipeline: a loaded pyannote pipeline (anything called as ``pipeline(file, **hints)``).
        device: where the pipeline runs, for the record (the caller has moved it there).
        encoder: GE2E encoder for the per-speaker embeddings; the shared one when omitted.
        embed: whether to compute per-speaker embeddings at all.
        voices: when given, per-speaker embeddings are made as voice profiles are
            (:func:`ingest.diarize.enroll.voice_embedding`), so they compare fairly with them.
    """

    name = "pyannote"

    def __init__(
        self,
        pipeline: Any,
        *,
        device: str = "cpu",
        encoder: VoiceEncoder | None = None,
        embed: bool = True,
        voices: EmbeddedDiarizer | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._voices = voices
        self.device = device
        self._encoder = encoder
        self._embed = embed
        self._lock = threading.Lock()  # one pipeline, one call at a time

    @classmethod
    def from_settings(cls, settings: DiarizationSettings, voices: EmbeddedDiarizer | None = None) -> PyannoteDiarizer:
        """Load ``PYANNOTE_PIPELINE`` (with ``HF_TOKEN``) and move it to ``PYANNOTE_DEVICE``."""
        pipeline, origin = _load_pipeline(settings)
        device = _device(settings.pyannote_device)
        if hasattr(pipeline, "to"):
            import torch

            pipeline.to(torch.device(device))
        log.info("pyannote pipeline %s loaded on %s", origin, device)
        return cls(pipeline, device=device, voices=voices)

    def find(self, audio: NDArray[np.float32], count: SpeakerCount) -> Diarization:
        """Run the pipeline on the waveform in memory; labels become 0, 1, ... by first appearance."""
        if audio.size == 0:
            return Diarization([])
        import torch

        waveform = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(0)  # (1, samples)
        hints: dict[str, int] = {}
        if count.exact:
            hints["num_speakers"] = count.exact
        elif count.maximum:
            hints["max_speakers"] = count.maximum
        with self._lock:
            output = self._pipeline({"waveform": waveform, "sample_rate": SAMPLE_RATE}, **hints)
        ids: dict[str, int] = {}
        turns = [SpeakerTurn(a, b, ids.setdefault(label, len(ids))) for a, b, label in pipeline_turns(output) if b > a]
        embeddings = self._speaker_embeddings(audio, turns) if self._embed and turns else {}
        return Diarization(turns, embeddings)

    def _speaker_embeddings(
        self, audio: NDArray[np.float32], turns: list[SpeakerTurn]
    ) -> dict[int, NDArray[np.float32]]:
        """One GE2E embedding per speaker, from the stretches where they speak alone."""
        if self._encoder is None:
            from ingest.diarize.encoder import shared_encoder

            self._encoder = shared_encoder()
        out: dict[int, NDArray[np.float32]] = {}
        for speaker, speech in solo_speech(audio, turns, EMBED_MAX_S).items():
            if self._voices is not None:
                from core.errors import NotEnoughSpeechError
                from ingest.diarize.enroll import voice_embedding

                try:
                    out[speaker] = voice_embedding(speech, diarizer=self._voices)[0]
                except NotEnoughSpeechError:
                    continue
            else:
                out[speaker] = self._encoder.embed(speech)
        return out


def load_pyannote(settings: DiarizationSettings, voices: EmbeddedDiarizer | None = None) -> PyannoteDiarizer:
    """The pyannote diarizer the settings describe; MissingDependencyError says what is missing."""
    return PyannoteDiarizer.from_settings(settings, voices)
