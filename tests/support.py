"""Test support: a real server process, synthesized speech with ground truth, and WER."""

from __future__ import annotations

import base64
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
            [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
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

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.http}/metrics", timeout=10).text
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
    """``text`` spoken by espeak-ng ``voice`` as 16 kHz mono float32."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(raw), text], check=True)
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
    """The bin directory of an installed PostgreSQL server, if any."""
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


class StandInEmbeddings:
    """A tiny OpenAI-compatible ``POST /v1/embeddings`` server for tests, on a free localhost port.

    A test stand-in for an embedding model, not ours: each text becomes a deterministic, unit-length
    hashed bag of words, so texts sharing words are close. It answers float lists, or base64 when
    asked (the ``openai`` SDK asks for base64 by default), and counts the texts it embedded.
    """

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.port = free_port()
        self.texts = 0
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
                owner.texts += len(texts)
                data = []
                for i, text in enumerate(texts):
                    vector = owner.embed(str(text))
                    encoded: Any = (
                        base64.b64encode(vector.astype("<f4").tobytes()).decode()
                        if body.get("encoding_format") == "base64"
                        else vector.tolist()
                    )
                    data.append({"object": "embedding", "index": i, "embedding": encoded})
                reply = json.dumps(
                    {
                        "object": "list",
                        "data": data,
                        "model": body.get("model", "stand-in"),
                        "usage": {"prompt_tokens": 0, "total_tokens": 0},
                    }
                ).encode()
                self.send_response(200)
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
