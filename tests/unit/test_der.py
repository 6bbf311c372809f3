"""Our DER scorer: exact hand-computed cases, agreement with pyannote.metrics, RTTM/UEM files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest.diarize.der import LabelledTurn, der, read_rttm, read_uem, rttm_lines
from tests.support import SHARED_DATA

AMI = SHARED_DATA / "ami_debug"
SAMPLE_RTTM = SHARED_DATA / "pyannote_sample" / "sample.rttm"


def turns(*spec: tuple[float, float, str]) -> list[LabelledTurn]:
    return [LabelledTurn(a, b, s) for a, b, s in spec]


# ---------------------------------------------------------------------------------------------
# Exact cases, computed by hand
# ---------------------------------------------------------------------------------------------

REFERENCE = turns((0.0, 4.0, "A"), (5.0, 9.0, "B"), (8.0, 10.0, "A"))  # 1 s of overlap at 8-9


def test_perfect_hypothesis_scores_zero():
    result = der(REFERENCE, REFERENCE, collar=0.0)
    assert (result.missed, result.false_alarm, result.confusion) == (0.0, 0.0, 0.0)
    assert result.reference == pytest.approx(10.0)  # overlap counts twice: 4 + 4 + 2
    assert result.der == 0.0


def test_empty_hypothesis_misses_everything():
    result = der(REFERENCE, [], collar=0.0)
    assert result.missed == pytest.approx(10.0)
    assert result.der == pytest.approx(1.0)


def test_labels_are_matched_not_compared_by_name():
    swapped = [LabelledTurn(t.start, t.end, {"A": "B", "B": "A"}[t.speaker]) for t in REFERENCE]
    result = der(REFERENCE, swapped, collar=0.0)
    assert result.der == 0.0
    assert result.mapping == {"A": "B", "B": "A"}


def test_pure_confusion():
    # Right regions, but B's first 4 s are given to A's label: 4 s confused out of 8 s.
    reference = turns((0.0, 4.0, "A"), (4.0, 8.0, "B"))
    hypothesis = turns((0.0, 8.0, "x"))
    result = der(reference, hypothesis, collar=0.0)
    assert (result.missed, result.false_alarm) == (0.0, 0.0)
    assert result.confusion == pytest.approx(4.0)
    assert result.der == pytest.approx(0.5)


def test_false_alarm_and_missed_overlap():
    reference = turns((0.0, 4.0, "A"), (2.0, 4.0, "B"))  # 2 s of overlap
    hypothesis = turns((0.0, 6.0, "x"))  # one speaker, 2 s too long
    result = der(reference, hypothesis, collar=0.0)
    assert result.reference == pytest.approx(6.0)
    assert result.missed == pytest.approx(2.0)  # the second voice of the overlap
    assert result.false_alarm == pytest.approx(2.0)
    assert result.confusion == 0.0
    assert result.der == pytest.approx(4 / 6)


def test_collar_is_removed_on_each_side_of_reference_boundaries():
    reference = turns((1.0, 5.0, "A"))
    hypothesis = turns((1.2, 4.8, "x"))  # 0.2 s short at each end: inside a 0.25 s collar
    assert der(reference, hypothesis, collar=0.25).der == 0.0
    result = der(reference, hypothesis, collar=0.1)
    assert result.missed == pytest.approx(0.2)  # 0.1 s left outside the collar at each end
    assert result.reference == pytest.approx(3.8)


def test_uem_limits_the_scored_region():
    reference = turns((0.0, 10.0, "A"))
    hypothesis = turns((0.0, 5.0, "x"), (5.0, 10.0, "y"))
    assert der(reference, hypothesis, collar=0.0).der == pytest.approx(0.5)
    assert der(reference, hypothesis, collar=0.0, uem=[(0.0, 5.0)]).der == 0.0
    assert der(reference, hypothesis, collar=0.0, uem=[(2.0, 4.0), (6.0, 7.0)]).reference == pytest.approx(3.0)


def test_a_speaker_overlapping_themselves_counts_once():
    reference = turns((0.0, 4.0, "A"), (2.0, 6.0, "A"))
    result = der(reference, turns((0.0, 6.0, "x")), collar=0.0)
    assert result.reference == pytest.approx(6.0)
    assert result.der == 0.0


def test_nothing_to_score():
    assert der([], [], collar=0.25).der == 0.0
    assert der([], turns((0.0, 1.0, "x")), collar=0.0).der == 1.0


# ---------------------------------------------------------------------------------------------
# Agreement with pyannote.metrics
# ---------------------------------------------------------------------------------------------


def pyannote_der(
    reference: list[LabelledTurn], hypothesis: list[LabelledTurn], uem: list[tuple[float, float]] | None
) -> dict[str, float]:
    """pyannote.metrics' DER components; its collar is the total width, so 0.5 is ±0.25 s."""
    core = pytest.importorskip("pyannote.core", reason="pyannote.metrics (dev extra) is not installed")
    metrics = pytest.importorskip("pyannote.metrics.diarization", reason="pyannote.metrics is not installed")

    def annotation(ts: list[LabelledTurn]):  # -> pyannote.core.Annotation
        out = core.Annotation()
        for i, t in enumerate(ts):
            out[core.Segment(t.start, t.end), i] = t.speaker
        return out

    timeline = core.Timeline([core.Segment(a, b) for a, b in uem]) if uem else None
    ref = annotation(reference)
    hyp = annotation(hypothesis)
    if timeline is None:  # what our scorer does without a UEM: score everything
        extent = (ref.get_timeline() | hyp.get_timeline()).extent()
        timeline = core.Timeline([core.Segment(0.0, max(extent.end, 0.0))])
    metric = metrics.DiarizationErrorRate(collar=0.5, skip_overlap=False)
    return dict(metric(ref, hyp, uem=timeline, detailed=True))


def well_formed(ts: list[LabelledTurn]) -> list[LabelledTurn]:
    """One speaker's overlapping or touching turns merged, as in any real RTTM.

    pyannote.metrics counts a speaker twice where two of their own turns overlap; we count them
    once (``test_a_speaker_overlapping_themselves_counts_once``), so such input is left out here.
    """
    out: list[LabelledTurn] = []
    for speaker in sorted({t.speaker for t in ts}):
        spans = sorted((t.start, t.end) for t in ts if t.speaker == speaker)
        start, end = spans[0]
        for a, b in spans[1:]:
            if a > end:
                out.append(LabelledTurn(start, end, speaker))
                start = a
            end = max(end, b)
        out.append(LabelledTurn(start, end, speaker))
    return sorted(out, key=lambda t: t.start)


def random_turns(rng: np.random.Generator, speakers: list[str], duration: float, n: int) -> list[LabelledTurn]:
    out = []
    for _ in range(n):
        start = float(rng.uniform(0, duration - 0.3))
        out.append(LabelledTurn(start, min(duration, start + float(rng.uniform(0.2, 6.0))), str(rng.choice(speakers))))
    return well_formed(out)


def perturb(
    rng: np.random.Generator, reference: list[LabelledTurn], extra_speakers: int, drop: float
) -> list[LabelledTurn]:
    """A plausible system output: shifted boundaries, relabelled, some turns dropped or given away."""
    names = sorted({t.speaker for t in reference})
    labels = {s: f"spk{i}" for i, s in enumerate(rng.permutation(names))}
    pool = [*labels.values(), *(f"extra{i}" for i in range(extra_speakers))]
    out = []
    for t in reference:
        if rng.random() < drop:
            continue
        a = max(0.0, t.start + float(rng.normal(0, 0.4)))
        b = max(a + 0.05, t.end + float(rng.normal(0, 0.4)))
        label = labels[t.speaker] if rng.random() > 0.2 else str(rng.choice(pool))
        out.append(LabelledTurn(a, b, label))
    duration = max(t.end for t in reference)
    out += random_turns(rng, pool, duration, int(rng.integers(1, 4)))  # false alarms
    return well_formed(out)


HANDMADE: list[tuple[str, list[LabelledTurn], list[LabelledTurn], list[tuple[float, float]] | None]] = [
    ("perfect", REFERENCE, REFERENCE, None),
    ("overlap-missed", REFERENCE, turns((0.0, 4.0, "x"), (5.0, 10.0, "y")), None),
    (
        "extra-speaker",
        REFERENCE,
        turns((0.0, 2.0, "x"), (2.0, 4.0, "z"), (5.0, 9.0, "y"), (8.0, 10.0, "x")),
        None,
    ),
    ("missing-speaker", turns((0, 3, "A"), (3, 6, "B"), (6, 9, "C")), turns((0, 4, "x"), (4, 9, "y")), None),
    ("uem-two-regions", REFERENCE, turns((0.3, 6.0, "x"), (6.0, 10.0, "y")), [(0.5, 3.0), (6.5, 9.5)]),
    ("adjacent-collars", turns((0, 0.3, "A"), (0.3, 0.6, "B"), (0.6, 5, "A")), turns((0, 5, "x")), None),
    ("hypothesis-after-reference", turns((0, 2, "A")), turns((1, 2, "x"), (3, 6, "y")), None),
]


@pytest.mark.parametrize(("name", "reference", "hypothesis", "uem"), HANDMADE, ids=[h[0] for h in HANDMADE])
def test_agrees_with_pyannote_metrics_on_handmade_pairs(name, reference, hypothesis, uem):
    theirs = pyannote_der(reference, hypothesis, uem)
    ours = der(reference, hypothesis, collar=0.25, uem=uem)
    assert ours.der == pytest.approx(theirs["diarization error rate"], abs=0.002), name
    assert ours.reference == pytest.approx(theirs["total"], abs=0.01)
    assert ours.missed == pytest.approx(theirs["missed detection"], abs=0.01)
    assert ours.false_alarm == pytest.approx(theirs["false alarm"], abs=0.01)
    assert ours.confusion == pytest.approx(theirs["confusion"], abs=0.01)


@pytest.mark.parametrize("seed", range(12))
def test_agrees_with_pyannote_metrics_on_random_pairs(seed: int):
    rng = np.random.default_rng(seed)
    speakers = [f"S{i}" for i in range(int(rng.integers(2, 5)))]
    duration = float(rng.uniform(20, 60))
    reference = random_turns(rng, speakers, duration, int(rng.integers(6, 20)))  # overlaps likely
    hypothesis = perturb(rng, reference, extra_speakers=int(rng.integers(0, 3)), drop=float(rng.uniform(0, 0.3)))
    uem = None
    if seed % 3 == 0:
        cut = float(rng.uniform(0.3, 0.6)) * duration
        uem = [(float(rng.uniform(0, 2)), cut), (cut + float(rng.uniform(1, 3)), duration + 1)]
    theirs = pyannote_der(reference, hypothesis, uem)
    ours = der(reference, hypothesis, collar=0.25, uem=uem)
    assert ours.der == pytest.approx(theirs["diarization error rate"], abs=0.002)
    assert ours.missed + ours.false_alarm + ours.confusion == pytest.approx(
        theirs["missed detection"] + theirs["false alarm"] + theirs["confusion"], abs=0.02
    )


# ---------------------------------------------------------------------------------------------
# RTTM and UEM files
# ---------------------------------------------------------------------------------------------


def shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data absent: {path}")
    return path


@pytest.mark.parametrize(
    "path",
    [SAMPLE_RTTM, AMI / "debug.development.rttm", AMI / "debug.train.rttm"],
    ids=["sample", "ami-dev", "ami-train"],
)
def test_rttm_round_trip(path: Path, tmp_path: Path):
    files = read_rttm(shared(path))
    assert files and all(files.values())
    written = tmp_path / "out.rttm"
    written.write_text("\n".join(line for f, ts in files.items() for line in rttm_lines(f, ts)) + "\n")
    again = read_rttm(written)
    assert again.keys() == files.keys()
    for file_id, ts in files.items():
        key = sorted(ts, key=lambda t: (t.start, t.end))
        assert [t.speaker for t in again[file_id]] == [t.speaker for t in key]
        assert np.allclose([(t.start, t.end) for t in again[file_id]], [(t.start, t.end) for t in key], atol=0.0015)


def test_rttm_matches_pyannote_database_reader():
    path = shared(SAMPLE_RTTM)
    util = pytest.importorskip("pyannote.database.util", reason="pyannote.database is not installed")
    theirs = util.load_rttm(path)["sample"]
    ours = read_rttm(path)["sample"]
    assert sorted((round(t.start, 3), round(t.end, 3), t.speaker) for t in ours) == sorted(
        (round(s.start, 3), round(s.end, 3), label) for s, _, label in theirs.itertracks(yield_label=True)
    )
    assert len({t.speaker for t in ours}) == 2


def test_non_ascii_speaker_names_survive():
    files = read_rttm(shared(AMI / "debug.train.rttm"))
    assert "MÉO069" in {t.speaker for ts in files.values() for t in ts}


@pytest.mark.parametrize("name", ["debug.development.uem", "debug.train.uem"])
def test_uem_round_trip(name: str, tmp_path: Path):
    path = shared(AMI / name)
    regions = read_uem(path)
    assert regions and all(b > a for rs in regions.values() for a, b in rs)
    written = tmp_path / name
    written.write_text("".join(f"{f} 1 {a:.3f} {b:.3f}\n" for f, rs in regions.items() for a, b in rs))
    assert read_uem(written) == regions
    util = pytest.importorskip("pyannote.database.util", reason="pyannote.database is not installed")
    theirs = util.load_uem(path)
    assert {f: [(s.start, s.end) for s in tl] for f, tl in theirs.items()} == regions


def test_shared_references_score_zero_against_themselves():
    reference = read_rttm(shared(AMI / "debug.development.rttm"))
    uem = read_uem(shared(AMI / "debug.development.uem"))
    for file_id, ts in reference.items():
        assert der(ts, ts, uem=uem[file_id]).der == 0.0
