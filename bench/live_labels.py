"""Live speaker labels: how long after an utterance ends its speaker is known, against a naive baseline.

Each clip is cut into utterances by the service's streaming VAD (the live endpointer, default
settings), fed in order as a stream would feed them. For every final utterance we time:

* **ours**: :meth:`SpeakerTracker.split` and :meth:`SpeakerTracker.label` (embedding the
  utterance, cutting it where the speaker changes, and assigning each piece to a speaker);
* **naive**: re-diarizing everything heard so far with the naive baseline of the models note
  (``bench/naive_diarizer.py``) and reading the label of the newest utterance, the simple way
  to label live with an offline diarizer; each of our pieces takes the naive speaker it overlaps most.

Both exclude speech-to-text. The lag is compute time on this machine, one thread for the
encoder. The DER of the labels is scored per utterance span (so VAD padding counts as false
alarm) for our live labels, our labels after the close-time refinement, and the naive ones.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, print_machine, save_json, table
from bench.diarize import back_to_back, clips, load_audio
from ingest.diarize.der import LabelledTurn, der, read_rttm, read_uem


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--all", action="store_true", help="also the ami_debug train clips trn00-trn09")
    p.add_argument(
        "--long", action="store_true", help="also all clips back to back as one stream, to show how the lag grows"
    )
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    from app.settings import StreamSettings
    from bench.naive_diarizer import NaiveDiarizer
    from ingest.diarize import load_embedded
    from ingest.diarize.tracker import SpeakerTracker, TimedSpan
    from ingest.ingest_settings import DiarizationSettings
    from ingest.vad import Endpointer, VadParams, load_vad

    args = parser().parse_args(argv)
    print_machine()
    vad = load_vad()
    ours = load_embedded(DiarizationSettings(threads=1), vad)
    naive = NaiveDiarizer(threads=1)
    s = StreamSettings()
    params = VadParams(
        threshold=s.vad_threshold,
        min_silence_ms=s.vad_min_silence_ms,
        speech_pad_ms=s.vad_speech_pad_ms,
        max_utterance_s=s.max_utterance_s,
        partial_interval_s=0.0,
    )
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    all_ours: list[float] = []
    all_naive: list[float] = []
    jobs = []
    for clip in clips(args.all):
        if clip.missing():
            print(f"{clip.name}: skipped, missing {', '.join(map(str, clip.missing()))}")
            continue
        reference = read_rttm(clip.rttm)[clip.file_id]
        jobs.append((clip, load_audio(clip.wav), reference, read_uem(clip.uem)[clip.file_id] if clip.uem else None))
    if args.long and jobs:
        jobs.append(back_to_back(jobs))
    for clip, audio, reference, uem in jobs:
        endpointer = Endpointer(vad, params)
        utterances = []
        for i in range(0, audio.size, 1600):  # 100 ms chunks, as frames arrive
            utterances += [u for u in endpointer.feed(audio[i : i + 1600]) if u.utterance.final]
        utterances += endpointer.flush()
        if not utterances:
            print(f"{clip.name}: the VAD found no utterance; skipped")
            continue
        tracker = SpeakerTracker(ours, match_threshold=0.75)
        ours.diarize(audio[: 16_000 * 3])  # warm-up
        spans, live, naive_labels, lag_ours, lag_naive = [], [], [], [], []
        for item in utterances:
            u = item.utterance
            started = time.perf_counter()
            split = tracker.split(item.audio)
            found = [TimedSpan(u.start + p.start, u.start + p.end) for p in split.pieces]
            live += tracker.label(item.audio, u.start, found, split)
            lag_ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            so_far = naive.diarize(audio[: int(u.end * 16_000)])
            newest = [t for t in so_far.turns if t.end > u.start]
            lag_naive.append(time.perf_counter() - started)
            for span in found:
                covering = [t for t in newest if min(t.end, span.end) > max(t.start, span.start)]
                naive_labels.append(
                    max(covering, key=lambda t: min(t.end, span.end) - max(t.start, span.start)).speaker
                    if covering
                    else 0
                )
            spans += found
        refined, _ = tracker.refine(spans, live)

        def score(
            labels: list[int], spans: list[Any] = spans, reference: list[LabelledTurn] = reference, uem: Any = uem
        ) -> float:
            hypothesis = [LabelledTurn(sp.start, sp.end, str(label)) for sp, label in zip(spans, labels, strict=True)]
            return der(reference, hypothesis, collar=0.25, uem=uem).der

        entry: dict[str, Any] = {
            "clip": clip.name,
            "utterances": len(spans),
            "lag_ours_p50_s": statistics.median(lag_ours),
            "lag_ours_max_s": max(lag_ours),
            "lag_naive_p50_s": statistics.median(lag_naive),
            "lag_naive_max_s": max(lag_naive),
            "der_live": score(live),
            "der_refined": score(refined),
            "der_naive": score(naive_labels),
        }
        results.append(entry)
        all_ours += lag_ours
        all_naive += lag_naive
        rows.append(
            [
                clip.name,
                len(spans),
                f"{entry['lag_ours_p50_s'] * 1000:.0f} / {entry['lag_ours_max_s'] * 1000:.0f}",
                f"{entry['lag_naive_p50_s'] * 1000:.0f} / {entry['lag_naive_max_s'] * 1000:.0f}",
                f"{entry['der_live'] * 100:.1f} %",
                f"{entry['der_refined'] * 100:.1f} %",
                f"{entry['der_naive'] * 100:.1f} %",
            ]
        )
        print(f"{clip.name}: done", flush=True)
    if all_ours:
        rows.append(
            [
                "all",
                len(all_ours),
                f"{statistics.median(all_ours) * 1000:.0f} / {max(all_ours) * 1000:.0f}",
                f"{statistics.median(all_naive) * 1000:.0f} / {max(all_naive) * 1000:.0f}",
                "",
                "",
                "",
            ]
        )
    print()
    print(
        table(
            [
                "clip",
                "spans",
                "ours lag p50 / max ms",
                "naive lag p50 / max ms",
                "DER ours live",
                "DER ours refined",
                "DER naive",
            ],
            rows,
        )
    )
    if args.json:
        save_json(args.json, {"machine": machine(), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
