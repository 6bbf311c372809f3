"""Audio in from a terminal: `ingest` files, `enroll` and list voices, `simulate` a device."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.settings import load_settings

if TYPE_CHECKING:
    pass

from app.cli.cli_support import Commands, Handler, open_speakers, print_json

__all__ = ["HANDLERS", "add_parsers"]


def add_parsers(commands: Commands) -> None:
    """Add this group's commands."""
    ingest = commands.add_parser("ingest", help="transcribe audio files (WAV, FLAC, MP3, Ogg/Opus) into conversations")
    ingest.add_argument("files", nargs="+", type=Path, metavar="FILE")
    ingest.add_argument("--uid", default="123", help="owner of the stored conversations (default: 123)")
    ingest.add_argument("--language", default="en", help="spoken language (default: en)")
    ingest.add_argument("--json", action="store_true", help="print the conversations as JSON to stdout")
    ingest.add_argument(
        "--no-deliver",
        action="store_true",
        help="store only; do not queue delivery to Letta and the memory index (queued changes are delivered by "
        "the running `omi-letta serve`)",
    )
    ingest.add_argument("--speakers", type=int, metavar="N", help="number of speakers, when known (default: estimated)")
    ingest.add_argument(
        "--rttm",
        type=Path,
        metavar="PATH",
        help="also write who spoke when (RTTM: times from each file's start; known people by name)",
    )

    enroll = commands.add_parser(
        "enroll",
        help="build a voice profile from a recording of one person speaking",
        description="Build a voice profile from a recording of one person speaking (at least 2 s of speech), so "
        "conversation speakers are recognised by name. Enrolling a name that exists (in any case), or --me again, "
        "improves that profile instead of adding one.",
    )
    enroll.add_argument("file", type=Path, metavar="FILE", help="WAV, FLAC, MP3 or Ogg recording of one person")
    who = enroll.add_mutually_exclusive_group(required=True)
    who.add_argument("--name", help="the speaker's name")
    who.add_argument("--me", action="store_true", help="the recording is the wearer's own voice")
    enroll.add_argument("--uid", default="123", help="owner of the profile (default: 123)")
    enroll.add_argument("--json", action="store_true", help="print the profile as JSON to stdout")

    speakers = commands.add_parser("speakers", help="list the voice profiles of a user")
    speakers.add_argument("--uid", default="123", help="owner of the profiles (default: 123)")
    speakers.add_argument("--json", action="store_true", help="print the profiles as JSON to stdout")

    sim = commands.add_parser("simulate", help="stream a file to a server as an OMI device would")
    sim.add_argument("file", type=Path, metavar="FILE")
    sim.add_argument("--url", default="ws://127.0.0.1:8000/v4/listen", help="the server's /v4/listen URL")
    sim.add_argument("--codec", default="opus_fs320", choices=("opus_fs320", "opus", "pcm16"))
    sim.add_argument("--token", default="dev-token", help="bearer token: ADMIN_KEY followed by your uid")
    sim.add_argument("--speed", type=float, default=1.0, help="pace at real time × SPEED (default: 1)")
    sim.add_argument("--language", default="en")
    sim.add_argument(
        "--settle",
        type=float,
        default=3.0,
        metavar="S",
        help="after the file, close once no segment has arrived for S seconds (default: 3)",
    )
    sim.add_argument(
        "--reconnect",
        type=int,
        default=0,
        metavar="N",
        help="reopen a lost stream up to N times in a row, as the OMI app does (after 1 s, then 1.5 times "
        "longer each try), and send the rest of the file (default: 0, the first loss is an error; the app: 8)",
    )
    sim.add_argument("--json", action="store_true", help="print the final segment list as JSON to stdout")


def _ingest(args: argparse.Namespace) -> int:
    from core.errors import IngestError

    settings = load_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        print(f"omi-letta ingest: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        conversations = asyncio.run(_ingest_files(settings, args))
    except IngestError as exc:
        print(f"omi-letta ingest: {exc.detail}", file=sys.stderr)
        return 1
    if args.json:
        print_json(conversations)
    else:
        for c in conversations:
            print(f"{c['id']}  {c['started_at']}  {len(c['segments'])} segments", file=sys.stderr)
    return 0


def _enroll(args: argparse.Namespace) -> int:
    from core.errors import IngestError
    from ingest.diarize import load_embedded
    from ingest.diarize.enroll import load_enrollment_audio, voice_embedding
    from ingest.vad import load_vad
    from memory.store.voice_profiles import clean_name

    settings = load_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.file.is_file():
        print(f"omi-letta enroll: no such file: {args.file}", file=sys.stderr)
        return 2
    try:
        name = clean_name(args.name) if args.name is not None else None
    except ValueError as exc:
        print(f"omi-letta enroll: {exc}", file=sys.stderr)
        return 2
    try:
        audio = load_enrollment_audio(args.file)
        embedding, seconds = voice_embedding(audio, diarizer=load_embedded(settings.diarization, load_vad()))
    except IngestError as exc:
        print(f"omi-letta enroll: {exc.detail}", file=sys.stderr)
        return 1

    async def store() -> dict[str, Any]:
        speakers, close = await open_speakers(settings)
        try:
            profile = await speakers.enroll(args.uid, name=name, is_user=args.me, embedding=embedding, seconds=seconds)
        finally:
            await close()
        return profile.to_api()

    profile = asyncio.run(store())
    if args.json:
        print_json(profile)
    else:
        print(
            f"enrolled {profile['name']}{' (the wearer)' if profile['is_user'] else ''} from {seconds:.1f} s of "
            f"speech; the profile now has {profile['seconds']:.1f} s: {profile['id']}"
        )
    return 0


def _speakers(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def listed() -> list[dict[str, Any]]:
        speakers, close = await open_speakers(settings)
        try:
            return [p.to_api() for p in await speakers.list(args.uid)]
        finally:
            await close()

    profiles = asyncio.run(listed())
    if args.json:
        print_json(profiles)
        return 0
    if not profiles:
        print(f"no voice profiles for uid {args.uid}; add one with `omi-letta enroll`", file=sys.stderr)
    for p in profiles:
        print(f"{p['id']}  {p['seconds']:7.1f} s  {p['name']}{'  (the wearer)' if p['is_user'] else ''}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from app.cli.simulator import Reconnect, SimulatorError, print_live, simulate

    if not args.file.is_file():
        print(f"omi-letta simulate: no such file: {args.file}", file=sys.stderr)
        return 2
    live = sys.stderr if args.json else sys.stdout
    try:
        result = asyncio.run(
            simulate(
                args.file,
                args.url,
                codec=args.codec,
                token=args.token,
                speed=args.speed,
                settle_s=args.settle,
                language=args.language,
                on_segments=lambda segs: print_live(segs, live),
                reconnect=Reconnect(attempts=args.reconnect) if args.reconnect > 0 else None,
            )
        )
    except SimulatorError as exc:
        print(f"omi-letta simulate: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"omi-letta simulate: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(result.ordered())
    return 0


async def _ingest_files(settings: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from app.service.recorded import hear
    from app.service.services import Services
    from core.conversation import iso
    from ingest.batch import group_segments
    from ingest.decode import audio_duration, load_audio_file
    from ingest.diarize.der import LabelledTurn, rttm_lines

    durations = [audio_duration(f) for f in args.files]  # fail on a bad file before loading models
    # Queue only: a running `omi-letta serve` delivers (it alone may write the local index).
    services = await Services.start(settings, queue=not args.no_deliver, deliver=False)
    out: list[dict[str, Any]] = []
    rttm: list[str] = []
    try:
        bar = tqdm(
            total=round(sum(durations), 1),
            unit="s audio",
            disable=not sys.stderr.isatty(),
            file=sys.stderr,
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]",
        )
        with bar:
            for path, duration in zip(args.files, durations, strict=True):
                bar.set_description(path.name)
                heard = await hear(
                    services.pipeline,
                    services.settings,
                    services.storage.speakers,
                    load_audio_file(path),
                    uid=args.uid,
                    origin=path.stat().st_mtime - duration,
                    language=args.language,
                    num_speakers=args.speakers,
                    hook=bar.update,
                )
                rttm += rttm_lines(
                    path.stem,
                    [
                        LabelledTurn(t.start, t.end, _rttm_speaker(t.speaker, heard.identities.get(t.speaker)))
                        for t in heard.diarization.turns
                    ],
                )
                gap_s = services.settings.conversation.default_timeout_s
                for started_at, segments in group_segments(heard.segments, gap_s):
                    stored = await services.storage.store.add_completed(
                        uid=args.uid,
                        source="sdcard",
                        language=args.language,
                        started_at=started_at,
                        segments=segments,
                        now=time.time(),
                    )
                    out.append(
                        {
                            "id": stored.id,
                            "started_at": iso(stored.started_at),
                            "finished_at": iso(stored.finished_at),
                            "segments": [
                                {
                                    k: getattr(s, k)
                                    for k in (
                                        "start",
                                        "end",
                                        "text",
                                        "speaker",
                                        "speaker_id",
                                        "speaker_name",
                                        "is_user",
                                        "person_id",
                                    )
                                }
                                for s in stored.segments
                            ],
                        }
                    )
    finally:
        await services.stop()
    if args.rttm:
        args.rttm.write_text("".join(f"{line}\n" for line in rttm))
    return out


def _rttm_speaker(speaker: int, identity: Any) -> str:
    """An RTTM speaker field: a known person's name (spaces as ``_``), ``me``, or ``SPEAKER_n``."""
    if identity is None:
        return f"SPEAKER_{speaker}"
    return "_".join(str(identity.name).split()) or f"SPEAKER_{speaker}"


HANDLERS: dict[str, Handler] = {
    "ingest": _ingest,
    "enroll": _enroll,
    "speakers": _speakers,
    "simulate": _simulate,
}
