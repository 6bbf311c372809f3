"""``omi-letta``: the service and its tools (serve, ingest, search, chat, doctor, …); ``--help`` lists them."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app import __version__
from app.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from memory.delivery.deliverer import Deliverer
    from memory.store.voice_profiles import SpeakerStore

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omi-letta",
        description="OMI-compatible live transcription into stored conversations and your Letta agent's memory.",
    )
    parser.add_argument("--version", action="version", version=f"omi-letta {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service (WebSocket /v4/listen, HTTP API, /docs)")
    serve.add_argument("--host", help="bind address (default: HOST setting, 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (default: PORT setting, 8000)")

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

    search = commands.add_parser(
        "search",
        help="search a user's remembered turns (words and meaning)",
        description="Search a user's turns in the memory index: lexical (names, dates) and vector hits, fused.",
    )
    search.add_argument("query", metavar="QUERY")
    search.add_argument("--uid", required=True, help="whose memory to search")
    search.add_argument("--limit", type=int, default=10, help="hits to return (default: 10)")
    search.add_argument("--speaker", help="only turns of this speaker (any case)")
    search.add_argument("--conversation", metavar="ID", help="only turns of this conversation")
    search.add_argument("--since", type=_when, metavar="WHEN", help="only turns ending at or after (ISO date/time)")
    search.add_argument("--until", type=_when, metavar="WHEN", help="only turns starting at or before (ISO date/time)")
    search.add_argument("--json", action="store_true", help="print the hits as JSON to stdout")

    outbox = commands.add_parser(
        "outbox",
        help="list, retry or purge changes waiting for delivery (dead letters)",
        description="Every stored change waits in the outbox until each sink (the memory index, Letta) accepted "
        "it. After OUTBOX_MAX_ATTEMPTS failures a record is dead: it no longer holds up the user's later "
        "records. List them, retry them once the cause is fixed, or purge them.",
    )
    verbs = outbox.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="list records (default: pending and dead)")
    listing.add_argument("--status", choices=("pending", "dead", "done", "all"), help="only records of this status")
    listing.add_argument("--uid", help="only this user's records")
    listing.add_argument("--sink", choices=("index", "letta"), help="only this sink's records")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default: 100)")
    listing.add_argument("--json", action="store_true", help="print the records as JSON to stdout")
    for verb, text in (("retry", "make dead records pending again, due now"), ("purge", "delete dead records")):
        cmd = verbs.add_parser(verb, help=text)
        which = cmd.add_mutually_exclusive_group(required=True)
        which.add_argument("ids", nargs="*", type=int, default=[], metavar="ID", help="record ids")
        which.add_argument("--all", action="store_true", help="every dead record")

    backfill = commands.add_parser(
        "backfill",
        help="deliver stored conversations again (a new or changed agent or index)",
        description="Queue stored conversations for delivery again and wait until they are delivered. Delivery "
        "is idempotent: what the agent and the index already hold is left alone, what is missing is added. "
        "A running `omi-letta serve` delivers them; otherwise this command does.",
    )
    backfill.add_argument("--uid", help="only this user's conversations (default: everyone's)")
    backfill.add_argument("--since", type=_when, metavar="WHEN", help="only conversations ending at or after this")
    backfill.add_argument("--sink", choices=("index", "letta"), help="only this sink (default: every configured one)")

    erase = commands.add_parser(
        "erase",
        help="erase everything of one user's: conversations (also in the memory index and Letta), voice "
        "profiles, API tokens, day summaries",
        description="Delete every conversation of the user with its turns, from the database, the memory index "
        "and their Letta agent (its passages and its recent_conversations block; the agent itself stays), and "
        "their voice profiles, API tokens and day summaries; then wait until the index and Letta have the "
        "deletions. A running `omi-letta serve` delivers them, and keeps a conversation it holds in progress "
        "(DELETE /v1/users/me/data erases that one too); otherwise this command delivers. It cannot be undone.",
    )
    erase.add_argument("--uid", required=True, help="whose data to erase")
    erase.add_argument("--json", action="store_true", help="print the counts as JSON to stdout")

    purge = commands.add_parser(
        "purge",
        help="delete conversations older than RETENTION_DAYS now (also in the memory index and Letta)",
        description="Delete every completed conversation that finished more than RETENTION_DAYS days ago (or "
        "--days N), from the database, the memory index and the Letta agents' passages, as `omi-letta serve` "
        "does at startup and every RETENTION_INTERVAL_S; then wait until the deletions are delivered. Voice "
        "profiles, API tokens and day summaries stay.",
    )
    purge.add_argument("--days", type=int, metavar="N", help="older than N days (default: RETENTION_DAYS)")
    purge.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    purge.add_argument("--json", action="store_true", help="print the counts as JSON to stdout")

    tokens = commands.add_parser(
        "token",
        help="create, list or revoke a user's API tokens",
        description="API tokens let clients other than the device (scripts, MCP clients, chat) call the HTTP API as "
        "one user: `Authorization: Bearer olt_...`. A token is shown once, when created; only its hash is stored.",
    )
    token_verbs = tokens.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = token_verbs.add_parser("create", help="make a token for a user and print it (once)")
    create.add_argument("--uid", required=True, help="the user the token acts as")
    create.add_argument("--name", default="", help="what the token is for, to tell tokens apart")
    create.add_argument("--json", action="store_true", help="print the token and its record as JSON")
    token_list = token_verbs.add_parser("list", help="list tokens (never the tokens themselves)")
    token_list.add_argument("--uid", help="only this user's tokens")
    token_list.add_argument("--json", action="store_true", help="print the tokens as JSON")
    revoke = token_verbs.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id", metavar="ID")

    audit = commands.add_parser(
        "audit",
        help="export the audit log: who read, searched, changed or deleted which conversation, when, from where",
        description="Print the audit log, oldest first: for each access its time, the user (empty: a refused "
        "token, or this command), the action, the conversation, the route or tool, the client's address and "
        "the status. It never holds what was said or searched for. Reading it is itself recorded (export).",
    )
    audit.add_argument("--uid", help="only what this user did")
    audit.add_argument("--since", type=_when, metavar="WHEN", help="only entries at or after this (ISO date/time)")
    audit.add_argument("--until", type=_when, metavar="WHEN", help="only entries at or before this (ISO date/time)")
    audit_format = audit.add_mutually_exclusive_group()
    audit_format.add_argument("--json", action="store_true", help="print the entries as JSON to stdout")
    audit_format.add_argument("--csv", action="store_true", help="print the entries as CSV (times in ISO 8601)")

    backup = commands.add_parser(
        "backup",
        help="write one archive of the database, the memory index and the encryption keys (safe while serving)",
        description="Write one .tar.gz of DATA_DIR's state: the SQLite database and the local memory index, each "
        "copied as one consistent snapshot while `omi-letta serve` goes on writing, the encryption key file "
        "(DATA_DIR/keys) and the other small state files, with a manifest of checksums. The local Letta "
        "server's data (DATA_DIR/letta) and model caches are not in it: `omi-letta backfill` refills Letta "
        "after a restore. THE KEYS ARE INCLUDED BY DEFAULT: such an archive decrypts the data by itself, so "
        "keep it as safe as the data, or give --no-keys and keep the key apart. With a PostgreSQL "
        "DATABASE_URL, back the database up with pg_dump.",
    )
    backup.add_argument(
        "path",
        nargs="?",
        type=Path,
        metavar="PATH",
        help="the archive to write, or a folder for it (default: ./omi-letta-backup-<UTC time>.tar.gz)",
    )
    backup.add_argument(
        "--no-keys",
        action="store_true",
        help="leave the encryption key file out; the archive is then unreadable without the key kept elsewhere",
    )
    backup.add_argument(
        "--skip-database",
        action="store_true",
        help="leave the database out: for a PostgreSQL DATABASE_URL, whose data `pg_dump` backs up",
    )
    backup.add_argument("--json", action="store_true", help="print the manifest as JSON to stdout")

    restore = commands.add_parser(
        "restore",
        help="restore an `omi-letta backup` archive into an empty DATA_DIR",
        description="Check every file of ARCHIVE against its manifest before writing anything, then write the "
        "database, the memory index, the keys and the state files into DATA_DIR (each written beside its place "
        "and renamed there), and migrate the database to this version's schema. A DATA_DIR that holds a "
        "database is refused unless --force; stop `omi-letta serve` first. The local Letta server's data is "
        "not in backups: `omi-letta backfill` delivers every conversation to Letta again, idempotently.",
    )
    restore.add_argument("archive", type=Path, metavar="ARCHIVE", help="an archive written by `omi-letta backup`")
    restore.add_argument(
        "--force", action="store_true", help="replace the database and the files the archive holds if they exist"
    )
    restore.add_argument("--json", action="store_true", help="print what was restored as JSON to stdout")

    chat = commands.add_parser(
        "chat",
        help="ask your agent about your past conversations (a terminal chat)",
        description="Chat with your Letta agent through a running service's POST /v1/chat. The agent searches "
        "your memory with its tools; its answer streams in as it is written. Type a question per line; Ctrl-D "
        "or /quit leaves. Without a terminal, each line of standard input is one question.",
    )
    chat.add_argument("--url", help="the service (default: http://127.0.0.1:PORT)")
    chat.add_argument(
        "--token", help="your API token (`omi-letta token create --uid U`); default: the OMI_LETTA_TOKEN variable"
    )
    chat.add_argument("-m", "--message", help="ask this one question, print the answer and exit")
    chat.add_argument("-v", "--verbose", action="store_true", help="also show the agent's reasoning and tool results")

    rotate = commands.add_parser(
        "rotate-key",
        help="re-encrypt the stored data under a new encryption key, then drop the old key",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Re-encrypt everything kept encrypted at rest (transcript text, summaries and voice profiles in
the database; the text and vectors of the local memory index) under a new key, in batches with
a progress bar, then drop the old key once nothing uses it. Values stored before encryption
existed are encrypted too. The SQLite files are compacted at the end (VACUUM), so no earlier
copy of a value stays in their free pages; with PostgreSQL, run VACUUM FULL for that.

Stop `omi-letta serve` (and other omi-letta commands) first: this refuses to run while a service
holds DATA_DIR/delivery.lock. A service on another machine sharing a PostgreSQL DATABASE_URL
cannot be seen from here: stop it by hand.

With the key file (ENCRYPTION_KEY_FILE, default DATA_DIR/keys/omi-letta.key) one run does it
all: the new key is written into the file beside the old one before any value uses it, and the
old one is removed at the end. If it is interrupted, run it again.

With ENCRYPTION_KEY from the environment it takes two runs. The first only prints a new
ENCRYPTION_KEY, and ENCRYPTION_OLD_KEYS holding the current key; set both (a restarted service
reads old values through ENCRYPTION_OLD_KEYS). The second run, with both set, re-encrypts under
the new key and says when ENCRYPTION_OLD_KEYS can be removed.""",
    )
    rotate.add_argument(
        "--no-new-key",
        action="store_true",
        help="re-encrypt under the current key instead of a new one: encrypts data stored before encryption "
        "existed, or finishes an interrupted rotation",
    )

    doctor = commands.add_parser(
        "doctor",
        help="show which data goes to which host, and check that each backend answers",
        description="For the current settings (.env and the environment): every backend, what it is sent "
        "(audio, transcripts, embeddings) and to which host, whether PRIVACY_MODE allows it, and whether it "
        "is reachable and accepts its credentials. Exits 1 if anything is refused or failing.",
    )
    doctor.add_argument("--offline", action="store_true", help="only show the data flows; reach nothing")

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

    local = commands.add_parser(
        "letta-local",
        help="run a local Letta server (for development and tests)",
        description="Run the pinned open-source Letta server (0.16.8) on 127.0.0.1 with its own PostgreSQL and "
        "pgvector, until Ctrl-C. The first run installs it into its own virtual environment under DIR (about "
        "1 GB, under a minute with uv); later runs reuse the environment, the database and the schema. Logs go "
        "to DIR/logs. When LETTA_API_KEY is set, the server requires it. Nothing is sent off the machine.",
    )
    local.add_argument("--port", type=int, help="server port (default: LETTA_LOCAL_PORT setting, 8283)")
    local.add_argument("--dir", type=Path, metavar="DIR", help="where it lives (default: DATA_DIR/letta)")
    local.add_argument(
        "--unless-configured",
        action="store_true",
        help="do nothing when LETTA_BASE_URL is set (how `make run` starts it beside the service)",
    )
    return parser


_READS_STORED_DATA = frozenset(
    {"enroll", "speakers", "search", "outbox", "backfill", "erase", "purge", "token", "audit"}
)
"""Commands that read or write stored data themselves: they load the encryption key first (serve and ingest
load it in ``Services.start``)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command in _READS_STORED_DATA:
            _unlock(load_settings())
        if args.command == "serve":
            return _serve(args)
        if args.command == "ingest":
            return _ingest(args)
        if args.command == "enroll":
            return _enroll(args)
        if args.command == "speakers":
            return _speakers(args)
        if args.command == "letta-local":
            return _letta_local(args)
        if args.command == "search":
            return _search(args)
        if args.command == "outbox":
            return _outbox(args)
        if args.command == "backfill":
            return _backfill(args)
        if args.command in ("erase", "purge"):
            return _forget(args)
        if args.command == "token":
            return _token(args)
        if args.command == "audit":
            return _audit(args)
        if args.command == "rotate-key":
            return _rotate_key(args)
        if args.command == "backup":
            return _backup(args)
        if args.command == "restore":
            return _restore(args)
        if args.command == "chat":
            return _chat(args)
        if args.command == "doctor":
            return _doctor(args)
        return _simulate(args)
    except SettingsError as exc:
        print(f"omi-letta: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _doctor(args: argparse.Namespace) -> int:
    from app.ops.doctor import check_all, report

    settings = load_settings(enforce_privacy=False)  # show what the privacy mode would refuse
    checked = None if args.offline else asyncio.run(check_all(settings))
    text, ok = report(settings, checked)
    print(text)
    return 0 if ok else 1


def _chat(args: argparse.Namespace) -> int:
    from app.cli.chat_client import ChatClientError, ask, printer, repl

    token = args.token or os.environ.get("OMI_LETTA_TOKEN", "")
    if not token:
        print("omi-letta chat: give --token or set OMI_LETTA_TOKEN (omi-letta token create --uid U)", file=sys.stderr)
        return 2
    url = args.url or f"http://127.0.0.1:{load_settings().server.port}"
    if args.message is None:
        return repl(url, token, verbose=args.verbose)
    try:
        ask(url, token, args.message, printer(sys.stdout, verbose=args.verbose))
    except ChatClientError as exc:
        print(f"omi-letta chat: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.http.server import configure_logging, create_app
    from app.service.services import check_can_serve

    settings = load_settings()
    server = replace(settings.server, host=args.host or settings.server.host, port=args.port or settings.server.port)
    settings = replace(settings, server=server)  # the port also tells Letta where our embeddings are
    configure_logging(settings.server.log_level)
    check_can_serve(settings)  # fail before binding the port
    _unlock(settings)  # a key that does not fit the data, too
    uvicorn.run(
        create_app(settings),
        host=server.host,
        port=server.port,
        log_level=settings.server.log_level.lower(),
        # /v4/listen closes with 1009 and a reason over WS_MAX_FRAME_BYTES; the protocol layer refuses
        # (also with 1009) what is far over it before reading it in.
        ws_max_size=2 * settings.stream.max_frame_bytes,
        # Open streams (a device's, a web page's) get this long to finish before shutdown goes on.
        timeout_graceful_shutdown=10,
    )
    return 0


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
        _print_json(conversations)
    else:
        for c in conversations:
            print(f"{c['id']}  {c['started_at']}  {len(c['segments'])} segments", file=sys.stderr)
    return 0


async def _ingest_files(settings: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from app.service.services import Services
    from core.conversation import iso
    from ingest.batch import transcribe_file
    from ingest.decode import audio_duration
    from ingest.diarize.der import Turn, rttm_lines
    from ingest.identity import apply_identity, identity_of, match_profiles

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
                transcript = await asyncio.to_thread(
                    transcribe_file,
                    path,
                    asr=services.transcriber.asr,
                    diarizer=services.diarizer,
                    vad=services.vad,
                    params=services.vad_params(),
                    language=args.language,
                    gap_s=services.settings.conversation.default_timeout_s,
                    started_at=path.stat().st_mtime - duration,
                    hook=bar.update,
                    workers=services.settings.asr.workers,
                    num_speakers=args.speakers or services.settings.diarization.num_speakers or None,
                    max_speakers=services.settings.diarization.max_speakers,
                )
                identities = {
                    s: identity_of(profile)
                    for s, (profile, _) in match_profiles(
                        transcript.diarization.embeddings,
                        await services.speakers.list(args.uid),
                        services.settings.diarization.speaker_match_threshold,
                    ).items()
                }
                rttm += rttm_lines(
                    path.stem,
                    [
                        Turn(t.start, t.end, _rttm_speaker(t.speaker, identities.get(t.speaker)))
                        for t in transcript.diarization.turns
                    ],
                )
                for started_at, found in transcript.conversations:
                    segments = [apply_identity(s, s.speaker_id, identities.get(s.speaker_id)) for s in found]
                    stored = await services.store.add_completed(
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
        speakers, close = await _open_speakers(settings)
        try:
            profile = await speakers.enroll(args.uid, name=name, is_user=args.me, embedding=embedding, seconds=seconds)
        finally:
            await close()
        return profile.to_api()

    profile = asyncio.run(store())
    if args.json:
        _print_json(profile)
    else:
        print(
            f"enrolled {profile['name']}{' (the wearer)' if profile['is_user'] else ''} from {seconds:.1f} s of "
            f"speech; the profile now has {profile['seconds']:.1f} s: {profile['id']}"
        )
    return 0


def _speakers(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def listed() -> list[dict[str, Any]]:
        speakers, close = await _open_speakers(settings)
        try:
            return [p.to_api() for p in await speakers.list(args.uid)]
        finally:
            await close()

    profiles = asyncio.run(listed())
    if args.json:
        _print_json(profiles)
        return 0
    if not profiles:
        print(f"no voice profiles for uid {args.uid}; add one with `omi-letta enroll`", file=sys.stderr)
    for p in profiles:
        print(f"{p['id']}  {p['seconds']:7.1f} s  {p['name']}{'  (the wearer)' if p['is_user'] else ''}")
    return 0


async def _open_speakers(settings: Settings) -> tuple[SpeakerStore, Callable[[], Awaitable[None]]]:
    """The voice profile store over the configured database, and how to close it."""
    from memory.store.conversation_store import ConversationStore
    from memory.store.voice_profiles import SpeakerStore

    store = await ConversationStore.open(settings.database_url)
    return SpeakerStore(store.engine), store.close


def _when(text: str) -> float:
    """An ISO 8601 date or date-time (UTC unless it says otherwise), or epoch seconds."""
    from datetime import UTC, datetime

    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date (2025-10-28), date-time or epoch") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _search(args: argparse.Namespace) -> int:
    from core.conversation import iso
    from memory.search.hybrid import open_search

    settings = load_settings()
    if not args.query.strip():
        print("omi-letta search: the query is blank", file=sys.stderr)
        return 2

    async def run() -> list[dict[str, Any]]:
        search = open_search(
            settings.embeddings, settings.vector_index, settings.server.data_dir, settings.database_url
        )
        try:
            hits = await search.search(
                args.uid,
                args.query,
                limit=args.limit,
                speaker=args.speaker,
                conversation_id=args.conversation,
                since=args.since,
                until=args.until,
            )
        finally:
            await search.close()
        return [msgspec_builtins(h) for h in hits]

    hits = asyncio.run(run())
    if args.json:
        _print_json(hits)
        return 0
    if not hits:
        print(f"nothing found for uid {args.uid}", file=sys.stderr)
    for h in hits:
        print(f"{h['score']:.4f}  {iso(h['start'])[:16]}  {h['speaker']}: {h['text']}  [{h['conversation_id'][:8]}]")
    return 0


def _outbox(args: argparse.Namespace) -> int:
    from core.conversation import iso
    from memory.store.conversation_store import ConversationStore
    from memory.store.outbox import Outbox

    settings = load_settings()

    async def run() -> Any:
        store = await ConversationStore.open(settings.database_url)
        outbox = Outbox(store.engine)
        try:
            if args.verb == "retry":
                return await outbox.retry(None if args.all else args.ids)
            if args.verb == "purge":
                return await outbox.purge(None if args.all else args.ids)
            statuses = ["pending", "dead"] if args.status is None else [] if args.status == "all" else [args.status]
            found = []
            for status in statuses or [None]:
                found += await outbox.records(status=status, uid=args.uid, sink=args.sink, limit=args.limit)
            return sorted(found, key=lambda r: r.id)[: args.limit]
        finally:
            await store.close()

    result = asyncio.run(run())
    if args.verb in ("retry", "purge"):
        done = "made pending again" if args.verb == "retry" else "deleted"
        print(f"{result} dead record(s) {done}")
        return 0 if result or args.all else 1
    if args.json:
        _print_json([msgspec_builtins(r) for r in result])
        return 0
    if not result:
        print("the outbox holds no such record", file=sys.stderr)
    for r in result:
        print(
            f"{r.id:>7}  {r.status:<7}  {r.sink:<5}  {r.action:<7}  uid {r.uid}  conv {r.conversation_id[:8]}  "
            f"{len(r.turn_ids)} turn(s)  {r.attempts} attempt(s)  queued {iso(r.created_at)[:19]}"
            + (f"\n         last error: {r.last_error}" if r.last_error else "")
        )
    return 0


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


def msgspec_builtins(value: Any) -> Any:
    """A msgspec struct as JSON-ready builtins."""
    import msgspec

    return msgspec.to_builtins(value)


def _backfill(args: argparse.Namespace) -> int:

    from app.service.services import delivery_for
    from core.metrics import Metrics
    from memory.delivery.deliverer import DeliveryLock
    from memory.search.hybrid import open_search
    from memory.store.conversation_store import ConversationStore

    settings = load_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sinks = tuple(s for s in settings.sinks if args.sink in (None, s))
    if not sinks:
        print(f"omi-letta backfill: the {args.sink} sink is not configured (LETTA_DELIVERY=false)", file=sys.stderr)
        return 2

    async def run() -> int:
        store = await ConversationStore.open(settings.database_url, sinks=sinks)
        search = open_search(
            settings.embeddings, settings.vector_index, settings.server.data_dir, settings.database_url
        )
        outbox, deliverer = delivery_for(settings, store, search, Metrics(), sinks=sinks)
        lock = DeliveryLock(settings.server.data_dir)
        here = lock.acquire()
        try:
            keys = await store.keys(uid=args.uid, since=args.since)
            turns = sum(n for _, _, n in keys)
            if not keys:
                print("no stored conversation matches", file=sys.stderr)
                return 0
            started = time.monotonic()
            ids: list[int] = []
            for uid, conversation_id, _ in keys:
                ids += await store.requeue(uid, conversation_id, sinks)
            who = "delivering here" if here else "the running service delivers"
            print(f"{len(keys)} conversation(s), {turns} turn(s) queued for {', '.join(sinks)}; {who}", file=sys.stderr)
            if here:
                deliverer.start()
            state = await _drain_with_progress(deliverer, ids)
            elapsed = time.monotonic() - started
            print(
                f"delivered {state['done']} of {len(ids)} record(s) ({turns} turns) in {elapsed:.1f} s "
                f"({turns / max(elapsed, 1e-9):.0f} turns/s)",
                file=sys.stderr,
            )
            if state["pending"] or state["dead"]:
                error = await outbox.last_error(ids)
                print(
                    f"omi-letta backfill: {state['pending']} record(s) wait for a retry and {state['dead']} are dead; "
                    f"last error: {error}. `omi-letta outbox list` shows them.",
                    file=sys.stderr,
                )
                return 1
            return 0
        finally:
            await deliverer.stop()
            lock.release()
            await search.close()
            await store.close()

    return asyncio.run(run())


async def _drain_with_progress(deliverer: Deliverer, ids: list[int]) -> dict[str, int]:
    """Wait until outbox records ``ids`` are delivered or dead, with a progress bar on a terminal."""
    from tqdm import tqdm

    with tqdm(total=len(ids), unit="record", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:

        def show(now: dict[str, int]) -> None:
            bar.n = now["done"] + now["dead"]
            bar.set_postfix(failing=now["failing"], dead=now["dead"])
            bar.refresh()

        return await deliverer.drain(ids, progress=show)


def _forget(args: argparse.Namespace) -> int:
    """``erase --uid U`` and ``purge``: delete through the outbox, then wait for the sinks."""

    from app.ops.retention import Retention
    from app.service.services import delivery_for
    from core.conversation import iso
    from core.metrics import Metrics
    from memory.delivery.deliverer import DeliveryLock
    from memory.search.hybrid import open_search
    from memory.store.conversation_store import ConversationStore

    settings = load_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    name = f"omi-letta {args.command}"
    days = 0
    if args.command == "purge":
        days = settings.retention.days if args.days is None else args.days
        if args.days is not None and args.days < 1:
            print(f"{name}: --days must be at least 1", file=sys.stderr)
            return 2
        if days <= 0:
            print(f"{name}: RETENTION_DAYS is 0, which keeps conversations forever; give --days N", file=sys.stderr)
            return 2

    async def run() -> int:
        store = await ConversationStore.open(settings.database_url, sinks=settings.sinks)
        search = open_search(
            settings.embeddings, settings.vector_index, settings.server.data_dir, settings.database_url
        )
        outbox, deliverer = delivery_for(settings, store, search, Metrics())
        lock = DeliveryLock(settings.server.data_dir)
        here = lock.acquire()
        try:
            retention = Retention.over(store, days=days)
            if args.command == "purge":
                cutoff = iso(retention.cutoff() or 0.0)[:16].replace("T", " ")
                if args.dry_run:
                    found = await retention.expired()
                    counts = {"conversations": len(found), "turns": sum(n for _, _, n in found)}
                    if args.json:
                        _print_json(counts)
                    else:
                        print(
                            f"{counts['conversations']} conversation(s) with {counts['turns']} turn(s) finished "
                            f"before {cutoff} UTC ({days} day(s) ago); nothing deleted (--dry-run)"
                        )
                    return 0
                done = await retention.purge()
                what = f"deleted {done.conversations} conversation(s) with {done.turns} turn(s) that finished before "
                what += f"{cutoff} UTC ({days} day(s) ago)"
            else:
                done = await retention.erase(args.uid, keep_in_progress=not here)
                what = (
                    f"erased uid {args.uid}: {done.conversations} conversation(s) with {done.turns} turn(s), "
                    f"{done.speakers} voice profile(s), {done.tokens} API token(s), "
                    f"{done.day_summaries} day summary(ies)"
                )
                if not here and await store.in_progress(args.uid) is not None:
                    what += (
                        "; the running service holds a conversation of theirs in progress, which was kept: "
                        "DELETE /v1/users/me/data erases it too, or run this again once it closed"
                    )
            ids = done.records
            state = {"done": 0, "dead": 0, "pending": 0, "failing": 0}
            if not args.json:
                print(what)
            if ids:
                who = "delivering here" if here else "the running service delivers"
                print(f"{len(ids)} deletion(s) queued for {', '.join(store.sinks)}; {who}", file=sys.stderr)
                if here:
                    deliverer.start()
                started = time.monotonic()
                state = await _drain_with_progress(deliverer, ids)
                print(
                    f"delivered {state['done']} of {len(ids)} deletion(s) in {time.monotonic() - started:.1f} s",
                    file=sys.stderr,
                )
            if args.json:
                _print_json({**({"uid": args.uid} if args.command == "erase" else {}), **done.counts(), **state})
            if state["pending"] or state["dead"]:
                error = await outbox.last_error(ids)
                print(
                    f"{name}: {state['pending']} deletion(s) wait for a retry and {state['dead']} are dead; last "
                    f"error: {error}. `omi-letta serve` delivers them; `omi-letta outbox list` shows them.",
                    file=sys.stderr,
                )
                return 1
            return 0
        finally:
            await deliverer.stop()
            lock.release()
            await search.close()
            await store.close()

    return asyncio.run(run())


def _token(args: argparse.Namespace) -> int:
    from core.conversation import iso
    from core.errors import NotFoundError
    from memory.store.conversation_store import ConversationStore
    from memory.store.tokens import TokenStore

    settings = load_settings()

    async def run() -> Any:
        store = await ConversationStore.open(settings.database_url)
        tokens = TokenStore(store.engine)
        try:
            if args.verb == "create":
                return await tokens.create(args.uid, args.name)
            if args.verb == "revoke":
                return await tokens.revoke(args.id)
            return await tokens.list(args.uid)
        finally:
            await store.close()

    try:
        result = asyncio.run(run())
    except NotFoundError as exc:
        print(f"omi-letta token: {exc.detail}", file=sys.stderr)
        return 1
    if args.verb == "create":
        token, record = result
        if args.json:
            _print_json({"token": token, **msgspec_builtins(record)})
        else:
            print(token)
            print(f"API token {record.id} for uid {record.uid}; it is not shown again.", file=sys.stderr)
        return 0
    if args.verb == "revoke":
        print(f"revoked token {result.id} ({result.name}) of uid {result.uid}")
        return 0
    if args.json:
        _print_json([msgspec_builtins(t) for t in result])
        return 0
    if not result:
        print("no API tokens; make one with `omi-letta token create --uid U`", file=sys.stderr)
    for t in result:
        state = f"revoked {iso(t.revoked_at)[:19]}" if t.revoked_at else "active"
        used = iso(t.last_used_at)[:19] if t.last_used_at else "never"
        print(f"{t.id}  {t.hint}…  uid {t.uid}  {t.name}  created {iso(t.created_at)[:19]}  used {used}  {state}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    import csv
    import getpass

    from core.conversation import iso
    from memory.store.audit_log import AuditEntry, AuditLog
    from memory.store.conversation_store import ConversationStore

    settings = load_settings()

    async def run() -> list[dict[str, Any]] | None:
        store = await ConversationStore.open(settings.database_url)
        audit = AuditLog(store.engine)
        try:
            found = await audit.entries(uid=args.uid, since=args.since, until=args.until)
            try:
                operator = f"cli:{getpass.getuser()}"
            except (KeyError, OSError):  # no user name for this process's uid
                operator = "cli"
            audit.record(uid="", action="export", route="cli:audit", client=operator, status=200)
            recorded = await audit.flush()  # no export that is not itself on record
            await audit.close()
        finally:
            await store.close()
        return [msgspec_builtins(e) for e in found] if recorded else None

    entries = asyncio.run(run())
    if entries is None:
        print("omi-letta audit: could not record this export in the audit log; nothing printed", file=sys.stderr)
        return 1
    if args.json:
        _print_json(entries)
        return 0
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=AuditEntry.__struct_fields__, lineterminator="\n")
        writer.writeheader()
        writer.writerows({**e, "at": iso(e["at"])} for e in entries)
        return 0
    if not entries:
        print("the audit log holds no such entry", file=sys.stderr)
    for e in entries:
        print(
            f"{e['id']:>7}  {iso(e['at'])[:19]}  {e['action']:<12}  uid {e['uid'] or '-'}  "
            f"conv {e['conversation_id'] or '-'}  {e['route']}  from {e['client'] or '-'}  {e['status']}"
        )
    return 0


def _progress_bar() -> tuple[Any, Callable[[str, int, int], None]]:
    """A tqdm bar in bytes on a terminal, and the :data:`app.ops.backup.Hook` that moves it."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, file=sys.stderr, disable=not sys.stderr.isatty())

    def hook(name: str, done: int, total: int) -> None:
        bar.total = total
        bar.set_description(name, refresh=False)
        bar.n = done
        bar.refresh()

    return bar, hook


def _backup(args: argparse.Namespace) -> int:
    from app.ops.backup import BackupError, create_backup, default_archive_name

    settings = load_settings(enforce_privacy=False)  # it sends nothing anywhere
    dest = args.path or Path(default_archive_name())
    if dest.is_dir():
        dest = dest / default_archive_name()
    bar, hook = _progress_bar()
    try:
        with bar:
            report = create_backup(settings, dest, keys=not args.no_keys, database=not args.skip_database, hook=hook)
    except BackupError as exc:
        print(f"omi-letta backup: {exc.detail}", file=sys.stderr)
        return 1
    manifest = report.manifest
    if args.json:
        _print_json(json.loads(manifest.to_json()))
    size = report.path.stat().st_size
    print(
        f"backed up {len(manifest.files)} file(s) to {report.path} ({size / 1e6:.1f} MB; schema "
        f"{manifest.alembic_revision or '-'})",
        file=sys.stderr,
    )
    keys = [f.name for f in manifest.files if f.kind == "key"]
    if keys:
        print(
            f"WARNING: the archive holds the encryption key ({', '.join(keys)}): whoever has it can read every "
            "conversation. Keep it as safe as the data, or back up with --no-keys and keep the key apart.",
            file=sys.stderr,
        )
    for left in report.keys_left_out:
        print(
            f"the encryption key {left} is not in the archive (--no-keys): keep it apart; without it the archive "
            "cannot be read",
            file=sys.stderr,
        )
    if report.key_from_env:
        print(
            "the encryption key comes from ENCRYPTION_KEY and is not in the archive: keep it apart; without it the "
            "archive cannot be read",
            file=sys.stderr,
        )
    return 0


def _restore(args: argparse.Namespace) -> int:
    from app.ops.backup import BackupError, restore_backup

    settings = load_settings(enforce_privacy=False)  # it sends nothing anywhere
    bar, hook = _progress_bar()
    try:
        with bar:
            report = restore_backup(settings, args.archive, force=args.force, hook=hook)
    except BackupError as exc:
        print(f"omi-letta restore: {exc.detail}", file=sys.stderr)
        return 1
    manifest = report.manifest
    if args.json:
        _print_json(
            {
                "archive": str(args.archive),
                "created_at": manifest.created_at,
                "service_version": manifest.service_version,
                "alembic_revision": manifest.alembic_revision,
                "revision": report.revision,
                "files": [str(p) for p in report.written],
            }
        )
    print(
        f"restored {len(report.written)} file(s) into {settings.server.data_dir} from a backup of "
        f"{manifest.created_at} (omi-letta {manifest.service_version}, schema {manifest.alembic_revision or '-'}"
        f"{f', now {report.revision}' if report.revision != manifest.alembic_revision else ''})",
        file=sys.stderr,
    )
    if not manifest.has_database:
        print("the archive holds no database (made with --skip-database): restore it with pg_restore", file=sys.stderr)
    if report.key_problem is not None:
        print(f"WARNING: {report.key_problem}", file=sys.stderr)
    if report.key_missing is not None:
        print(
            f"the archive holds no encryption key and there is none at {report.key_missing}: put the key file "
            "back there, or set ENCRYPTION_KEY, before `omi-letta serve`; the data cannot be read without it",
            file=sys.stderr,
        )
    print(
        "Letta: the local Letta server's data is not in backups. Once Letta runs, `omi-letta backfill` delivers "
        "every conversation to it again; delivery is idempotent, so what the agent holds is left alone.",
        file=sys.stderr,
    )
    return 0


def _unlock(settings: Settings) -> None:
    """Open the database and load the encryption key that fits it (:func:`app.ops.keys.unlock`).

    Raises:
        SettingsError: the key does not fit the stored data, or is missing.
    """
    from app.ops.keys import unlock
    from memory.store.conversation_store import ConversationStore

    async def run() -> None:
        store = await ConversationStore.open(settings.database_url)
        try:
            await unlock(settings, store.engine)
        finally:
            await store.close()

    asyncio.run(run())


def _rotate_key(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from app.ops.keys import unlock, write_key_file
    from memory.delivery.deliverer import DeliveryLock
    from memory.rekey import census, compact, count_rows, rotate
    from memory.store.conversation_store import ConversationStore
    from memory.store.crypto import Keyring, encode_key, install

    settings = load_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    name = "omi-letta rotate-key"
    from_env = bool(settings.encryption.key)
    key_file = settings.encryption_key_file
    index_dir = settings.server.data_dir / "index"
    lock = DeliveryLock(settings.server.data_dir)

    async def run() -> int:
        store = await ConversationStore.open(settings.database_url)
        try:
            keyring = await unlock(settings, store.engine)  # the keys in use all open what is stored
            if from_env and not args.no_new_key and not settings.encryption.old_key_list:
                print(f"ENCRYPTION_KEY={encode_key(Keyring.new_key())}")
                print(f"ENCRYPTION_OLD_KEYS={','.join(encode_key(k) for k in keyring.by_id().values())}")
                print(
                    f"{name}: nothing is re-encrypted yet. Keep the new ENCRYPTION_KEY safe, set both variables "
                    "above, stop the service and run `omi-letta rotate-key` again with them set.",
                    file=sys.stderr,
                )
                return 0
            if not lock.acquire():
                print(
                    f"{name}: a running `omi-letta serve` uses {settings.server.data_dir} (it holds {lock.path}); "
                    "stop it first",
                    file=sys.stderr,
                )
                return 1
            if not from_env and not args.no_new_key:
                keyring = Keyring(Keyring.new_key(), keyring.by_id().values())
                write_key_file(key_file, keyring)  # before any value uses the new key
                print(f"new key {keyring.current_id} added to {key_file}", file=sys.stderr)
            install(keyring)
            total = await count_rows(store.engine, index_dir)
            with tqdm(total=total, unit="row", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
                rewritten = await rotate(store.engine, index_dir, progress=bar.update)
            found = await census(store.engine, index_dir)
            left = {place: n for place, used in found.items() if (n := sum(used.values()) - used[keyring.current_id])}
            if left:
                print(f"{name}: values still not under key {keyring.current_id}: {left}; run it again", file=sys.stderr)
                return 1
            await compact(store.engine, index_dir)  # no old copy stays in the files' free pages
            print(f"re-encrypted {rewritten} value(s) of {total} row(s); everything uses key {keyring.current_id}")
            dropped = [kid for kid in keyring.ids if kid != keyring.current_id]
            if dropped and not from_env:
                write_key_file(key_file, Keyring(keyring.current))
                print(f"dropped the old key(s) {', '.join(dropped)} from {key_file}")
            if settings.encryption.old_key_list:
                print("nothing uses the keys of ENCRYPTION_OLD_KEYS any more: remove it")
            return 0
        finally:
            lock.release()
            await store.close()

    return asyncio.run(run())


def _letta_local(args: argparse.Namespace) -> int:
    from app.ops.letta_local import run_forever

    settings = load_settings(enforce_privacy=False)  # it sends nothing anywhere; `serve` checks the rest
    if args.unless_configured and settings.letta.base_url:
        print(f"letta-local: LETTA_BASE_URL is set ({settings.letta.base_url}); not starting a local Letta server")
        return 0
    root = args.dir or settings.server.data_dir / "letta"
    # The server's agents embed through this service's /v1/embeddings, as a user named `letta`.
    service = (f"{settings.service_url}/v1", f"{settings.auth.admin_key}letta")
    return run_forever(root, args.port or settings.letta.local_port, password=settings.letta.api_key, service=service)


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
        _print_json(result.ordered())
    return 0


if __name__ == "__main__":
    sys.exit(main())
