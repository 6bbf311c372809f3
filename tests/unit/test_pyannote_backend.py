"""The pyannote.audio backend: its errors always, a fake pipeline always, real weights where present."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import MissingDependencyError
from ingest.diarize.der import LabelledTurn, der, read_rttm
from ingest.diarize.pyannote_backend import PyannoteDiarizer, load_pyannote, pipeline_turns
from ingest.ingest_settings import DiarizationSettings
from tests.support import SHARED_DATA

SAMPLE = SHARED_DATA / "pyannote_sample"


# ---------------------------------------------------------------------------------------------
# A stand-in for pyannote.audio: records how it is loaded and called
# ---------------------------------------------------------------------------------------------


@dataclass
class Segment:
    start: float
    end: float


class Annotation:
    """The part of ``pyannote.core.Annotation`` the backend uses."""

    def __init__(self, tracks: list[tuple[float, float, str]]) -> None:
        self.tracks = tracks

    def itertracks(self, yield_label: bool = False):
        for i, (a, b, label) in enumerate(self.tracks):
            yield (Segment(a, b), i, label) if yield_label else (Segment(a, b), i)


@dataclass
class DiarizeOutput:
    """pyannote 4's pipeline output."""

    speaker_diarization: Annotation
    exclusive_speaker_diarization: Annotation
    speaker_embeddings: Any = None


TRACKS = [(5.0, 8.0, "SPEAKER_00"), (0.5, 4.0, "SPEAKER_01"), (7.5, 9.0, "SPEAKER_02")]


class FakePipeline:
    loaded: list[tuple[str, dict[str, Any]]] = []
    returns: Any = "pipeline"
    output: Any = None

    def __init__(self) -> None:
        self.device: Any = None
        self.calls: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def to(self, device: Any) -> FakePipeline:
        self.device = device
        return self

    def __call__(self, file: dict[str, Any], **hints: Any) -> Any:
        self.calls.append((file, hints))
        return self.output


class Pipeline4(FakePipeline):
    @classmethod
    def from_pretrained(cls, checkpoint: str, revision: str | None = None, token: str | None = None) -> Any:
        cls.loaded.append((checkpoint, {"token": token}))
        if isinstance(cls.returns, Exception):
            raise cls.returns
        return cls() if cls.returns == "pipeline" else cls.returns


class Pipeline3(FakePipeline):
    @classmethod
    def from_pretrained(cls, checkpoint_path: str, hparams_file: str | None = None, use_auth_token: str | None = None):
        cls.loaded.append((checkpoint_path, {"use_auth_token": use_auth_token}))
        if isinstance(cls.returns, Exception):
            raise cls.returns
        return cls() if cls.returns == "pipeline" else cls.returns


@pytest.fixture(params=[Pipeline4, Pipeline3], ids=["pyannote4", "pyannote3"])
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type[FakePipeline]:
    """``pyannote.audio`` replaced by a module whose ``Pipeline`` is a fake of one major version."""
    cls: type[FakePipeline] = request.param
    monkeypatch.setattr(cls, "loaded", [])
    monkeypatch.setattr(cls, "returns", "pipeline")
    annotation = Annotation(TRACKS)
    monkeypatch.setattr(cls, "output", DiarizeOutput(annotation, annotation) if cls is Pipeline4 else annotation)
    module = types.ModuleType("pyannote.audio")
    module.Pipeline = cls  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyannote.audio", module)
    return cls


def settings(**kwargs: Any) -> DiarizationSettings:
    return DiarizationSettings(**{"pyannote_device": "cpu", **kwargs})


# ---------------------------------------------------------------------------------------------
# Always run
# ---------------------------------------------------------------------------------------------


def test_missing_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "pyannote.audio", None)  # makes the import fail
    with pytest.raises(MissingDependencyError) as info:
        load_pyannote(settings())
    message = str(info.value)
    assert "DIARIZER=pyannote needs pyannote.audio" in message
    assert "pip install 'omi-letta[pyannote]'" in message


def test_hub_pipeline_gets_the_token_under_each_versions_name(fake: type[FakePipeline]):
    diarizer = load_pyannote(settings(hf_token="hf_secret"))
    assert isinstance(diarizer, PyannoteDiarizer)
    assert diarizer.name == "pyannote"
    kw = "token" if fake is Pipeline4 else "use_auth_token"
    assert fake.loaded == [("pyannote/speaker-diarization-3.1", {kw: "hf_secret"})]
    assert str(diarizer._pipeline.device) == "cpu"


def test_no_token_and_nothing_cached_names_hf_token(fake: type[FakePipeline]):
    fake.returns = None  # pyannote 3 prints the hub's refusal and returns None
    with pytest.raises(MissingDependencyError) as info:
        load_pyannote(settings())
    message = str(info.value)
    assert "HF_TOKEN is not set" in message
    assert "PYANNOTE_PIPELINE=pyannote/speaker-diarization-3.1" in message
    assert "accept its conditions" in message


def test_gated_refusal_names_the_pipeline_and_the_token(fake: type[FakePipeline]):
    class GatedRepoError(Exception):
        pass

    fake.returns = GatedRepoError("403 Client Error: access to model is restricted")
    with pytest.raises(MissingDependencyError) as info:
        load_pyannote(settings(pyannote_pipeline="pyannote/speaker-diarization-community-1", hf_token="hf_x"))
    message = str(info.value)
    assert "PYANNOTE_PIPELINE=pyannote/speaker-diarization-community-1" in message
    assert "GatedRepoError: 403" in message
    assert "HF_TOKEN" in message and "HF_TOKEN is not set" not in message


def test_local_directory_is_loaded_without_a_token(fake: type[FakePipeline], tmp_path: Path):
    (tmp_path / "config.yaml").write_text("pipeline: {}\n")
    load_pyannote(settings(pyannote_pipeline=str(tmp_path)))
    expected = str(tmp_path) if fake is Pipeline4 else str(tmp_path / "config.yaml")
    ((checkpoint, token),) = fake.loaded
    assert checkpoint == expected
    assert set(token.values()) == {None}


def test_local_config_file_is_passed_as_is(fake: type[FakePipeline], tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text("pipeline: {}\n")
    load_pyannote(settings(pyannote_pipeline=str(config)))
    assert fake.loaded[0][0] == str(config)


@pytest.mark.parametrize("where", ["missing", "empty-dir"])
def test_bad_local_path_names_pyannote_pipeline(fake: type[FakePipeline], tmp_path: Path, where: str):
    path = tmp_path / "nowhere" if where == "missing" else tmp_path
    with pytest.raises(MissingDependencyError, match=rf"PYANNOTE_PIPELINE={path}"):
        load_pyannote(settings(pyannote_pipeline=str(path)))
    assert fake.loaded == []


def test_empty_pipeline_setting(fake: type[FakePipeline]):
    with pytest.raises(MissingDependencyError, match="PYANNOTE_PIPELINE is empty"):
        load_pyannote(settings(pyannote_pipeline=" "))


def test_cuda_asked_for_without_cuda(fake: type[FakePipeline], monkeypatch: pytest.MonkeyPatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MissingDependencyError, match="PYANNOTE_DEVICE=cuda"):
        load_pyannote(settings(pyannote_device="cuda"))
    assert str(load_pyannote(settings(pyannote_device="auto"))._pipeline.device) == "cpu"


def test_output_becomes_turns_numbered_by_first_appearance(fake: type[FakePipeline]):
    diarizer = PyannoteDiarizer(fake(), embed=False)
    audio = np.zeros(10 * 16_000, dtype=np.float32)
    result = diarizer.diarize(audio, num_speakers=3, max_speakers=8)
    assert [(t.start, t.end, t.speaker) for t in result.turns] == [(0.5, 4.0, 0), (5.0, 8.0, 1), (7.5, 9.0, 2)]
    assert result.embeddings == {}
    ((file, hints),) = diarizer._pipeline.calls
    assert hints == {"num_speakers": 3}
    assert file["sample_rate"] == 16_000
    assert tuple(file["waveform"].shape) == (1, audio.size)
    diarizer.diarize(audio, max_speakers=4)
    assert diarizer._pipeline.calls[-1][1] == {"max_speakers": 4}


def test_pyannote_3_output_with_embeddings_is_read_too():
    annotation = Annotation(TRACKS)
    assert pipeline_turns((annotation, np.zeros((3, 256)))) == sorted(TRACKS)
    assert pipeline_turns(DiarizeOutput(annotation, Annotation([]))) == sorted(TRACKS)
    with pytest.raises(TypeError):
        pipeline_turns(object())


def test_empty_audio_skips_the_pipeline(fake: type[FakePipeline]):
    diarizer = PyannoteDiarizer(fake(), embed=False)
    assert diarizer.diarize(np.zeros(0, dtype=np.float32)).turns == []
    assert diarizer._pipeline.calls == []


def test_embeddings_come_from_our_encoder_over_solo_speech(fake: type[FakePipeline]):
    class Encoder:
        def __init__(self) -> None:
            self.lengths: list[int] = []

        def embed(self, audio: np.ndarray) -> np.ndarray:
            self.lengths.append(audio.size)
            return np.ones(256, dtype=np.float32) / 16

    encoder = Encoder()
    diarizer = PyannoteDiarizer(fake(), encoder=encoder)  # type: ignore[arg-type]
    result = diarizer.diarize(np.zeros(10 * 16_000, dtype=np.float32))
    assert sorted(result.embeddings) == [0, 1, 2]
    # alone: speaker 0 for 3.5 s; speaker 1 for 2.5 s (5.0-7.5); speaker 2 for 1 s (8.0-9.0)
    assert encoder.lengths == [56_000, 40_000, 16_000]


# ---------------------------------------------------------------------------------------------
# With pyannote.audio and weights
# ---------------------------------------------------------------------------------------------


def real_settings() -> DiarizationSettings:
    return DiarizationSettings(
        pyannote_pipeline=os.environ.get("PYANNOTE_PIPELINE", "pyannote/speaker-diarization-3.1"),
        hf_token=os.environ.get("HF_TOKEN", ""),
        pyannote_device=os.environ.get("PYANNOTE_DEVICE", "auto"),
    )


@pytest.mark.slow
def test_pyannote_sample_with_real_weights():
    if importlib.util.find_spec("pyannote.audio") is None:
        pytest.skip("pyannote.audio is not installed (pip install 'omi-letta[pyannote]')")
    wav, rttm = SAMPLE / "sample.wav", SAMPLE / "sample.rttm"
    if not wav.exists() or not rttm.exists():
        pytest.skip(f"shared data absent: {SAMPLE}")
    try:
        diarizer = load_pyannote(real_settings())
    except MissingDependencyError as exc:
        pytest.skip(f"pyannote weights are not available: {exc.detail}")
    import soundfile

    audio, rate = soundfile.read(wav, dtype="float32")
    assert rate == 16_000
    result = diarizer.diarize(audio)
    reference = read_rttm(rttm)["sample"]
    score = der(reference, [LabelledTurn(t.start, t.end, str(t.speaker)) for t in result.turns], collar=0.25)
    assert len(result.speakers) == 2
    assert score.der <= 0.10, (
        f"DER {score.der:.1%} (missed {score.missed:.2f} s, false alarm {score.false_alarm:.2f} s, "
        f"confusion {score.confusion:.2f} s)"
    )
    assert sorted(result.embeddings) == result.speakers
