"""Shared pieces of the benchmarks: synthetic speech, a server subprocess, a paced OMI client.

Everything here talks to 127.0.0.1 only. Speech comes from ``espeak-ng`` (resampled and trimmed
by ``sox``), so the exact sample where each utterance ends is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

if TYPE_CHECKING:
    from memory.search.embeddings import Embedder
    from memory.search.hybrid import Turn

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SAMPLE_RATE = 16_000
ADMIN_KEY = "benchkey1234"
KEEPALIVE = b"\x8a\x00"
CODEC = "opus_fs320"

SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please remember to buy milk and bread on the way home tonight.",
    "Our meeting with the design team moved to Thursday afternoon.",
    "I think the new battery lasts almost twice as long as the old one.",
    "Can you send me the report before lunch tomorrow?",
    "The weather forecast says it will rain for most of the weekend.",
    "She parked the car behind the library and walked to the station.",
    "We should test the microphone again before the presentation.",
    "My brother is learning to play the piano this summer.",
    "The restaurant on the corner serves excellent soup on Mondays.",
    "Let us schedule a short call to review the budget numbers.",
    "The children planted tomatoes and beans in the garden.",
    "He forgot his umbrella at the office again yesterday.",
    "The museum opens at nine and closes at five every day.",
    "I will pick up the package from the post office later.",
    "The train to the airport leaves every fifteen minutes.",
    "Could you turn down the music a little, please?",
    "The doctor said I should drink more water and sleep earlier.",
    "Our neighbors are painting their house a bright yellow color.",
    "The software update fixed the problem with the wireless connection.",
    "Dinner will be ready in about twenty minutes.",
    "We watched a documentary about whales and dolphins last night.",
    "The library has a new collection of science fiction novels.",
    "Remind me to call the plumber about the kitchen sink.",
    "The conference starts next Monday in the main hall.",
    "I prefer tea in the morning and coffee after lunch.",
    "The cat sat on the windowsill watching the birds outside.",
    "Please close the door quietly when you leave the room.",
    "The bakery sells fresh croissants until ten in the morning.",
    "Our flight was delayed by two hours because of fog.",
    "The students finished their project a week early.",
    "Turn left at the second traffic light and then go straight.",
    "The orchestra played a beautiful symphony at the concert.",
    "I need to renew my passport before the trip in April.",
    "The garden looks wonderful after the spring rain.",
    "He wrote a long letter to his grandmother in Spain.",
    "The store is having a big sale on winter jackets.",
    "We hiked to the top of the hill to see the sunrise.",
    "The printer on the third floor is out of paper again.",
    "Let me know when you arrive at the hotel.",
)
WARMUP_SENTENCE = "This short sentence only warms up the speech recognizer."
TRIM = ("vol", "0.8", "silence", "1", "0.1", "1%", "reverse", "silence", "1", "0.1", "1%", "reverse")
VOICES = ("en-us+f3", "en-us+m3", "en-gb+f2", "en-us+m1")


# ---------------------------------------------------------------------------------------------
# Speech synthesis
# ---------------------------------------------------------------------------------------------


def require_tools(*names: str) -> None:
    """Exit with a message if a command-line tool is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)} (install them, e.g. `make system-deps`)")


def synth(text: str, voice: str, rate: int, cache: Path) -> NDArray[np.float32]:
    """``text`` spoken by espeak-ng, 16 kHz mono float32, leading and trailing silence trimmed."""
    key = hashlib.sha1(f"{voice}|{rate}|{text}".encode()).hexdigest()[:16]
    out = cache / f"{key}.wav"
    if not out.exists():
        raw = cache / f"{key}.raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(raw), text], check=True)
        # trim silence at both ends (1 % amplitude), resample to 16 kHz mono 16-bit
        subprocess.run(
            ["sox", "-V1", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out), *TRIM],
            check=True,
        )
        raw.unlink()
    audio, sr = sf.read(out, dtype="float32")
    assert sr == SAMPLE_RATE
    return np.asarray(audio, dtype=np.float32)


def synth_many(items: list[tuple[str, str]], rate: int, cache: Path) -> list[NDArray[np.float32]]:
    """Synthesize (text, voice) pairs in parallel."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(lambda tv: synth(tv[0], tv[1], rate, cache), items))


@dataclass(frozen=True)
class Utt:
    """One utterance placed in a track: sample span and reference text."""

    start: int
    end: int
    text: str

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


@dataclass
class Track:
    """A synthetic recording: utterances separated by digital silence."""

    audio: NDArray[np.float32]
    utts: list[Utt]

    @property
    def seconds(self) -> float:
        return self.audio.size / SAMPLE_RATE

    def write(self, path: Path) -> Path:
        sf.write(path, self.audio, SAMPLE_RATE, subtype="PCM_16")
        return path


def build_track(
    clips: list[NDArray[np.float32]], texts: list[str], pauses: list[float], *, lead_s: float, tail_s: float
) -> Track:
    """Concatenate ``clips``: ``lead_s`` of silence, clip, pause, clip, ..., ``tail_s`` of silence."""
    parts = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)]
    utts: list[Utt] = []
    pos = parts[0].size
    for i, (clip, text) in enumerate(zip(clips, texts, strict=True)):
        utts.append(Utt(pos, pos + clip.size, text))
        parts.append(clip)
        pos += clip.size
        gap = np.zeros(int((pauses[i] if i < len(clips) - 1 else tail_s) * SAMPLE_RATE), np.float32)
        parts.append(gap)
        pos += gap.size
    return Track(np.concatenate(parts), utts)


# ---------------------------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``["A=1", "B=2"]`` (or ``"A=1,B=2"`` items) → dict."""
    out: dict[str, str] = {}
    for item in pairs:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            name, sep, value = pair.partition("=")
            if not sep or not name:
                raise ValueError(f"expected NAME=value, got {pair!r}")
            out[name] = value
    return out


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → ``{'name{labels}': value}``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


class Server:
    """``omi-letta serve`` in a subprocess on a free 127.0.0.1 port with a temporary DATA_DIR.

    Use as a context manager; the process (and its temp dir) is gone afterwards.
    """

    command: tuple[str, ...] = (str(BIN / "omi-letta"),)  # what runs ``serve``; experiments may swap it

    def __init__(self, env: dict[str, str] | None = None, *, startup_timeout_s: float = 180.0) -> None:
        self.overrides = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="omi-bench-server-")
        self.data_dir = Path(self._tmp.name)
        self.log_path = self.data_dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v4/listen"

    def __enter__(self) -> Server:
        from app.settings import env_table

        ours = {name for name, _, _ in env_table()}
        env = {k: v for k, v in os.environ.items() if k not in ours}  # only our settings count
        env.update(
            DATA_DIR=str(self.data_dir),
            HOST="127.0.0.1",
            PORT=str(self.port),
            ADMIN_KEY=ADMIN_KEY,
            LOCAL_DEVELOPMENT="false",
            LOG_LEVEL="WARNING",
            LETTA_DELIVERY="false",  # a bench that measures delivery names its Letta server
        )
        env.update(self.overrides)
        log = self.log_path.open("wb")
        # cwd = the temp dir, so no stray .env is read
        self.proc = subprocess.Popen(
            [*self.command, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.data_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()  # before __exit__ removes the log with the temp dir
                self.__exit__(None, None, None)
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{tail}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.base}/health", timeout=1).read()
                return self
            time.sleep(0.2)
        tail = self.log_tail()
        self.__exit__(None, None, None)
        raise RuntimeError(f"server did not start in {self.startup_timeout_s:.0f} s:\n{tail}")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._tmp.cleanup()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_warnings(self) -> list[str]:
        """WARNING/ERROR lines of the server's log so far."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if re.search(r"\b(WARNING|ERROR|Traceback)\b", line)]

    def metrics(self) -> dict[str, float]:
        """GET /metrics, parsed."""
        request = urllib.request.Request(f"{self.base}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            return parse_metrics(r.read().decode())

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# A paced OMI client
# ---------------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    """What one paced stream saw: when each packet went out and when each segment message came in."""

    send_times: list[float] = field(default_factory=list)  # time.monotonic() after sending packet i
    messages: list[tuple[float, list[dict[str, Any]]]] = field(default_factory=list)
    segments: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: float = 0.0
    error: str | None = None

    def transcript(self) -> str:
        """The final transcript (segments upserted by id, by start time)."""
        return " ".join(s["text"] for s in sorted(self.segments.values(), key=lambda s: (s["start"], s["end"])))


async def stream_packets(
    url: str,
    token: str,
    packets: list[bytes],
    period: float,
    *,
    start_at: float | None = None,
    settle_s: float = 3.0,
    max_wait_s: float = 60.0,
    query: str = "",
) -> StreamResult:
    """Send ``packets`` one per message at real time, answer ``ping``, collect segment messages.

    Streaming starts at monotonic time ``start_at`` (or as soon as the server is ready). After the
    last packet it waits until no segment has arrived for ``settle_s`` (at most ``max_wait_s``).
    """
    import websockets

    result = StreamResult()
    target = f"{url}?codec={CODEC}&sample_rate={SAMPLE_RATE}&language=en{query}"
    headers = {"Authorization": f"Bearer {token}"}
    last_message = [0.0]
    try:
        async with websockets.connect(target, additional_headers=headers, max_size=None) as ws:
            ready = asyncio.Event()

            async def receive() -> None:
                async for message in ws:
                    if message == "ping":
                        await ws.send(KEEPALIVE)
                        continue
                    now = time.monotonic()
                    payload = json.loads(message)
                    if isinstance(payload, list):
                        result.messages.append((now, payload))
                        for seg in payload:
                            result.segments[seg["id"]] = seg
                        last_message[0] = now
                    elif payload.get("type") == "service_status" and payload.get("status") == "ready":
                        ready.set()

            receiver = asyncio.create_task(receive())
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({receiver, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if receiver.done():
                receiver.result()
                raise RuntimeError(f"server closed the stream: {ws.close_code} {ws.close_reason}")
            start = max(start_at or 0.0, time.monotonic())
            result.started = start
            for i, packet in enumerate(packets):
                delay = start + i * period - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(packet)
                result.send_times.append(time.monotonic())
            done_at = time.monotonic()
            while not receiver.done():
                now = time.monotonic()
                if now - max(done_at, last_message[0]) >= settle_s or now - done_at >= max_wait_s:
                    break
                await asyncio.sleep(0.05)
            if not receiver.done():
                await ws.close()
            await asyncio.gather(receiver, return_exceptions=True)
    except Exception as exc:  # reported per stream, the benchmark goes on
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def encode(track: Track) -> tuple[list[bytes], float]:
    """The track as OMI device packets (``opus_fs320``: one 20 ms Opus packet each)."""
    from app.cli.simulator import encode_frames

    return encode_frames(track.audio, CODEC)


def decode(packets: list[bytes]) -> NDArray[np.float32]:
    """What the server hears: the packets through the server's own decoder."""
    from ingest.decode import make_decoder

    decoder = make_decoder(CODEC, SAMPLE_RATE)
    return np.concatenate([decoder(p) for p in packets])


@dataclass
class Lags:
    """Per utterance: wall time from its last packet being sent to its final segment arriving."""

    lags: list[float | None]
    messages: int
    unmatched_messages: int

    @property
    def found(self) -> list[float]:
        return [x for x in self.lags if x is not None]

    @property
    def missing(self) -> int:
        return sum(1 for x in self.lags if x is None)


def final_lags(
    result: StreamResult, track: Track, period: float, *, tolerance_s: float = 1.2, pad_s: float = 0.15
) -> Lags:
    """Attribute segment messages to utterances and measure end-of-utterance → final-segment lag.

    A message's largest segment ``end`` (seconds since the conversation began, which is about
    where the first utterance begins) is mapped onto the track's time line and given to the
    utterance whose end is nearest (within ``tolerance_s``); the offset between the two time lines
    is refined once from the matches. Partial results of an utterance arrive before its final one
    (the server transcribes one stream's utterances in order), so an utterance's LAST matched
    message is its final segment. The utterance's end is the send time of the packet holding its
    last sample.
    """
    ends = np.array([u.end_s for u in track.utts])
    offset = track.utts[0].start_s - pad_s
    matched: dict[int, list[tuple[float, float]]] = {}
    unmatched = 0
    for _ in range(2):
        matched, unmatched = {}, 0
        for arrival, segs in result.messages:
            if not segs:
                continue
            est = max(float(s["end"]) for s in segs) + offset
            j = int(np.argmin(np.abs(ends - est)))
            if abs(ends[j] - est) <= tolerance_s:
                matched.setdefault(j, []).append((arrival, est))
            else:
                unmatched += 1
        residuals = [ends[j] - hits[-1][1] for j, hits in matched.items()]
        if residuals:
            offset += float(np.median(residuals))
    samples_per_packet = round(period * SAMPLE_RATE)
    lags: list[float | None] = []
    for j, utt in enumerate(track.utts):
        k = (utt.end - 1) // samples_per_packet
        hits = matched.get(j)
        if not hits or k >= len(result.send_times):
            lags.append(None)
            continue
        lag = hits[-1][0] - result.send_times[k]
        lags.append(lag if lag >= 0 else None)  # only a partial arrived: no final for it
    return Lags(lags, len(result.messages), unmatched)


# ---------------------------------------------------------------------------------------------
# Synthetic memory: one user's turns in the local search indexes
# ---------------------------------------------------------------------------------------------

NAMES = ["Diane", "Sheila", "Bob", "Priya", "Marcus", "Elena", "Tom", "Aisha", "Kenji", "Laura"]
PLACES = ["New Jersey", "Texas", "Chicago", "the office", "the clinic", "Lisbon", "the airport", "the gym"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend", "tomorrow", "next week"]
TEMPLATES = [
    "{name} said she would meet us in {place} on {day}.",
    "Remind me to call {name} about the budget before {day}.",
    "I think {name} moved to {place} last year.",
    "The meeting with {name} got pushed to {day} afternoon.",
    "Can you pick up {name} from {place} on {day}?",
    "{name} wants the report finished by {day}.",
    "We had dinner with {name} near {place}.",
    "My appointment in {place} is on {day} at nine.",
    "{name} told me the flight to {place} was delayed.",
    "Don't forget the groceries, {name} is coming over {day}.",
]
MEMORY_T0 = 1_761_645_720.0  # when the first synthetic turn starts (epoch s); one turn every 30 s
TURNS_PER_CONVERSATION = 40


def store_synthetic(env: dict[str, str], uid: str, conversations: int, per: int) -> int:
    """Store conversations of synthetic turns (nothing queued) in the database the settings ``env`` name
    (``DATA_DIR`` for SQLite, or ``DATABASE_URL``), with its encryption key; returns the turn count."""
    from app.ops.keys import unlock
    from app.settings import load_settings
    from core.segments import TranscriptSegment
    from memory.store.conversation_store import ConversationStore

    async def run() -> int:
        settings = load_settings(env, env_file=None)
        store = await ConversationStore.open(settings.database_url)
        await unlock(settings, store.engine)
        t0 = time.time() - 86_400 * conversations
        for c in range(conversations):
            segments = [
                TranscriptSegment(
                    text=SENTENCES[(c * per + i) % len(SENTENCES)],
                    speaker=f"SPEAKER_{i % 2}",
                    speaker_id=i % 2,
                    is_user=i % 2 == 0,
                    start=4.0 * i,
                    end=4.0 * i + 3.0,
                    speaker_name="me" if i % 2 == 0 else "Speaker 1",
                )
                for i in range(per)
            ]
            await store.add_completed(
                uid=uid, source="omi", language="en", started_at=t0 + 86_400 * c, segments=segments, now=time.time()
            )
        await store.close()
        return conversations * per

    return asyncio.run(run())


def memory_sentences(count: int, seed: int = 1) -> list[str]:
    """``count`` distinct sentences about people, places, days and errands, from :data:`TEMPLATES`."""
    most = len({t.format(name=n, place=p, day=d) for t in TEMPLATES for n in NAMES for p in PLACES for d in DAYS})
    if count > most:
        raise ValueError(f"the templates make only {most} distinct sentences, not {count}")
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < count:
        out.add(rng.choice(TEMPLATES).format(name=rng.choice(NAMES), place=rng.choice(PLACES), day=rng.choice(DAYS)))
    return sorted(out)


def embed_texts(embedder: Embedder, texts: list[str], *, label: str = "texts", chunk: int = 256) -> NDArray[np.float32]:
    """``embedder.embed(texts)`` a chunk at a time, printing how far it got."""
    parts = []
    t = time.perf_counter()
    for first in range(0, len(texts), chunk):
        parts.append(embedder.embed(texts[first : first + chunk]))
        done = min(first + chunk, len(texts))
        print(f"\rembedding {label}: {done}/{len(texts)}", end="", flush=True)
    print(f" in {time.perf_counter() - t:.1f} s", flush=True)
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)


def memory_turns(
    n: int, pool: list[str], pool_vectors: NDArray[np.float32], *, uid: str = "bench", seed: int | None = None
) -> tuple[list[Turn], NDArray[np.float32]]:
    """``n`` turns of one user, and their vectors: each turn says a pool sentence, its vector the
    sentence's plus a little noise (search time does not depend on the values).

    Turn ``i`` is ``t{i}`` in conversation ``c{i // 40}``, starts at ``MEMORY_T0 + 30 i`` and lasts
    4 s; every third turn is the user's (``me``), the others are said by the first five names.
    ``seed`` (default ``n``) picks the sentences and the noise.
    """
    from memory.search.embeddings import normalize
    from memory.search.hybrid import Turn

    rng = np.random.default_rng(n if seed is None else seed)
    which = rng.integers(0, len(pool), n)
    vectors = normalize(pool_vectors[which] + 0.05 * rng.standard_normal((n, pool_vectors.shape[1])))
    turns = [
        Turn(
            uid=uid,
            turn_id=f"t{i}",
            conversation_id=f"c{i // TURNS_PER_CONVERSATION}",
            speaker=NAMES[i % 5] if i % 3 else "me",
            is_user=i % 3 == 0,
            start=MEMORY_T0 + 30 * i,
            end=MEMORY_T0 + 30 * i + 4,
            text=pool[which[i]],
        )
        for i in range(n)
    ]
    return turns, np.asarray(vectors, dtype=np.float32)


def seed_indexes(
    folder: Path,
    turns: list[Turn],
    vectors: NDArray[np.float32],
    *,
    chunk: int = 5000,
    also: dict[str, Callable[[Sequence[Turn]], object]] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Write ``turns`` with their ``vectors`` into the local vector index and the lexical index in
    ``folder`` (a server's ``DATA_DIR/index``), ``chunk`` turns at a time, and close both files.

    ``also`` names more writers, each given every chunk too (a baseline's store, say). Returns the
    seconds each writer took, by name: ``vector``, ``lexical`` and those of ``also``.
    """
    from memory.search.hybrid import LexicalIndex
    from memory.search.local_index import LocalVectorIndex
    from memory.search.vector_index import IndexItem

    index = LocalVectorIndex(folder)
    lexical = LexicalIndex(folder)
    seconds = dict.fromkeys(["vector", "lexical", *(also or {})], 0.0)
    try:
        for first in range(0, len(turns), chunk):
            part = turns[first : first + chunk]
            t = time.perf_counter()
            index._upsert(
                [
                    IndexItem(**{f: getattr(x, f) for f in x.__struct_fields__}, vector=v)
                    for x, v in zip(part, vectors[first : first + chunk], strict=True)
                ]
            )
            seconds["vector"] += time.perf_counter() - t
            t = time.perf_counter()
            lexical.upsert_sync(part)
            seconds["lexical"] += time.perf_counter() - t
            for name, write in (also or {}).items():
                t = time.perf_counter()
                write(part)
                seconds[name] += time.perf_counter() - t
            if progress:
                done = first + len(part)
                print(f"\rseeding turns: {done}/{len(turns)}", end="" if done < len(turns) else "\n", flush=True)
    finally:
        asyncio.run(_close(index, lexical))
    return seconds


def indexed_counts(folder: Path, uid: str) -> dict[str, int]:
    """How many of ``uid``'s turns the vector and the lexical index files in ``folder`` hold."""
    from memory.search.hybrid import LexicalIndex
    from memory.search.local_index import LocalVectorIndex

    async def count() -> dict[str, int]:
        index, lexical = LocalVectorIndex(folder), LexicalIndex(folder)
        try:
            return {"vector": await index.count(uid), "lexical": await lexical.count(uid)}
        finally:
            await _close(index, lexical)

    return asyncio.run(count())


async def _close(*indexes: Any) -> None:
    for index in indexes:
        await index.close()


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``; NaN when empty."""
    return float(np.percentile(values, q)) if values else float("nan")


def summary(values: list[float]) -> tuple[float, float, float]:
    """(p50, p95, max)."""
    return pct(values, 50), pct(values, 95), (max(values) if values else float("nan"))


def table(headers: list[str], rows: list[list[Any]], floatfmt: str = ".2f") -> str:
    """A GitHub-flavoured Markdown table (also readable in a terminal)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "–" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    numeric = [all(not isinstance(row[i], str) for row in rows) for i in range(len(headers))]
    lines += [
        "| " + " | ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(r, widths, numeric, strict=True)) + " |"
        for r in text
    ]
    return "\n".join(lines)


def words(text: str) -> list[str]:
    """Lower-case words without punctuation (numbers kept as written)."""
    return re.findall(r"[a-z0-9']+", text.lower())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate (Levenshtein distance over words / reference words)."""
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        return float(bool(hyp))
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)


def machine() -> dict[str, str]:
    """Facts about this machine for the report."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    versions = {}
    for pkg in ("faster_whisper", "ctranslate2", "onnxruntime"):
        with contextlib.suppress(Exception):
            versions[pkg] = __import__(pkg).__version__
    commit = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "app", "ingest", "memory"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += "+dirty" if dirty else ""
    return {
        "commit": commit,
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "memory": mem,
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **versions,
    }


def print_machine() -> None:
    """One line describing the machine."""
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine().items()), flush=True)


def save_json(path: Path | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON if a path was given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {path}")
