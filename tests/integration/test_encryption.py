"""Encryption at rest on a real server: what was said and voices are unreadable on disk, `rotate-key`, a wrong key."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile

from memory.store.crypto import Keyring, decode_key
from tests.support import ADMIN_KEY, ServerProcess, Turn, free_port, speak, token

UID = "encrypted"
WORD = "pharmacy"  # said in the dialogue fixture's last turn
STORED = ("omi-letta.db", "index/vectors.db", "index/lexical.db")
HEADER = re.compile(rb"enc:v1:([0-9a-f]{12}):")
RAW_VALUES = {  # file: queries of every encrypted value it holds
    "omi-letta.db": ("SELECT text FROM segments", "SELECT embedding FROM speaker_profiles"),
    "index/vectors.db": ("SELECT text FROM turns", "SELECT vector FROM turns"),
    "index/lexical.db": ("SELECT text FROM turns",),
}


def cli(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``omi-letta ARGS`` over ``data_dir``, as an operator runs it."""
    full = {**os.environ, "DATA_DIR": str(data_dir), "ADMIN_KEY": ADMIN_KEY, "LETTA_DELIVERY": "false", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=data_dir, env=full, capture_output=True, text=True, timeout=300
    )


def on_disk(data_dir: Path) -> bytes:
    """Every byte of the database and the index files, with their journals and write-ahead logs."""
    return b"".join(p.read_bytes() for name in STORED for p in sorted(data_dir.glob(f"{name}*")) if p.is_file())


def raw_values(data_dir: Path) -> list[bytes]:
    """Every encrypted value as stored, read with sqlite3."""
    found: list[bytes] = []
    for name, queries in RAW_VALUES.items():
        with closing(sqlite3.connect(f"file:{data_dir / name}?mode=ro", uri=True)) as db:
            for query in queries:
                found += [v if isinstance(v, bytes) else v.encode() for (v,) in db.execute(query)]
    return found


def schema(data_dir: Path) -> str:
    """The files' table definitions, lower case: their column names are words too (``finished_at``)."""
    found = []
    for name in RAW_VALUES:
        with closing(sqlite3.connect(f"file:{data_dir / name}?mode=ro", uri=True)) as db:
            found += [sql for (sql,) in db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")]
    return " ".join(found).lower()


def key_ids_in_use(data_dir: Path) -> set[str]:
    return {m.group(1).decode() if (m := HEADER.match(v)) else "plaintext" for v in raw_values(data_dir)}


def key_file(data_dir: Path) -> dict[str, Any]:
    return dict(json.loads((data_dir / "keys" / "omi-letta.key").read_text()))


def search(server: ServerProcess, q: str) -> list[dict[str, Any]]:
    reply = server.get("/v1/memory/search", uid=UID, params={"q": q, "limit": 20})
    assert reply.status_code == 200, reply.text
    return list(reply.json()["items"])


def transcript(server: ServerProcess, conversation_id: str) -> str:
    reply = server.get(f"/v1/conversations/{conversation_id}", uid=UID)
    assert reply.status_code == 200, reply.text
    return " ".join(s["text"] for s in reply.json()["transcript_segments"])


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, dialogue: tuple[Path, list[Turn]]) -> Iterator[dict[str, Any]]:
    """A server whose user enrolled a voice and ingested the dialogue, delivered to the memory index."""
    folder = tmp_path_factory.mktemp("encrypted")
    server = ServerProcess(folder / "data").start()
    try:
        voice = folder / "diane.wav"
        sentence = "The quick brown fox jumps over the lazy dog while the farmer watches from the barn."
        soundfile.write(voice, speak(sentence, "en-us+f3", voice) * 0.8, 16_000)
        enrolled = httpx.post(
            f"{server.http}/v1/speakers/enroll",
            headers={"Authorization": f"Bearer {token(UID)}"},
            files={"file": (voice.name, voice.read_bytes())},
            data={"name": "Diane"},
            timeout=120,
        )
        assert enrolled.status_code == 201, enrolled.text
        done = cli(server.data_dir, "ingest", str(dialogue[0]), "--uid", UID, "--json")
        assert done.returncode == 0, done.stderr
        [conversation] = json.loads(done.stdout)
        said = " ".join(s["text"] for s in conversation["segments"])
        assert WORD in said.lower(), f"the dialogue was heard as: {said}"
        deadline = time.monotonic() + 90
        while not any(WORD in h["text"].lower() for h in search(server, WORD)):
            assert time.monotonic() < deadline, f"the turns never reached the memory index:\n{server.log()[-3000:]}"
            time.sleep(0.5)
        yield {"server": server, "conversation": conversation["id"], "said": said}
    finally:
        server.stop()


def test_what_was_said_and_voices_are_unreadable_on_disk_yet_the_api_reads_them(stored: dict[str, Any]):
    server: ServerProcess = stored["server"]
    data = server.data_dir
    assert WORD in transcript(server, stored["conversation"]).lower()
    assert any(WORD in h["text"].lower() for h in search(server, WORD))

    disk = on_disk(data).lower()
    tables = schema(data)
    words = {w for w in re.findall(r"[a-z]{6,}", stored["said"].lower()) if w not in tables}
    assert WORD in words and not [w for w in words if w.encode() in disk], "no word said is in the files"

    keyring = Keyring(decode_key(next(iter(key_file(data)["keys"].values()))))
    values = raw_values(data)
    assert values and key_ids_in_use(data) == {keyring.current_id}, "every value is encrypted with the file's key"
    with closing(sqlite3.connect(f"file:{data / 'omi-letta.db'}?mode=ro", uri=True)) as db:
        [(blob,)] = db.execute("SELECT embedding FROM speaker_profiles").fetchall()
    voice = keyring.decrypt_bytes(blob, "speaker_profiles.embedding")
    assert abs(float(np.linalg.norm(np.frombuffer(voice, dtype="<f4"))) - 1.0) < 1e-4, "it holds the voice"
    assert voice not in on_disk(data), "the voice profile's bytes are nowhere in plaintext"
    with closing(sqlite3.connect(f"file:{data / 'index/vectors.db'}?mode=ro", uri=True)) as db:
        vector = keyring.decrypt_bytes(
            db.execute("SELECT vector FROM turns").fetchone()[0], "index/vectors.db:turns.vector"
        )
    assert abs(float(np.linalg.norm(np.frombuffer(vector, dtype="<f4"))) - 1.0) < 1e-4
    assert vector not in on_disk(data), "nor is a turn's embedding"

    keys = data / "keys" / "omi-letta.key"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600 and stat.S_IMODE(keys.parent.stat().st_mode) == 0o700
    audio = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".raw", ".pcm"}
    assert not [p for p in data.rglob("*") if p.suffix.lower() in audio], "no audio is kept, enrollment's included"


def test_a_wrong_key_stops_startup_with_an_error_naming_the_setting(stored: dict[str, Any]):
    data = stored["server"].data_dir
    wrong = "A" * 43 + "="
    refused = cli(data, "serve", "--port", str(free_port()), env={"ENCRYPTION_KEY": wrong})
    assert refused.returncode == 2, refused.stderr
    assert "the encryption key does not match the stored data" in refused.stderr
    assert "Set ENCRYPTION_KEY to the key the data was written with" in refused.stderr
    assert "Traceback" not in refused.stderr and wrong not in refused.stderr

    elsewhere = data.parent / "no-such.key"
    missing = cli(data, "search", WORD, "--uid", UID, env={"ENCRYPTION_KEY_FILE": str(elsewhere)})
    assert missing.returncode == 2 and f"there is no key: ENCRYPTION_KEY_FILE={elsewhere}" in missing.stderr
    assert not elsewhere.exists(), "no new key is made for data that has one"


def test_rotate_key_reencrypts_everything_and_drops_the_old_key(stored: dict[str, Any]):
    server: ServerProcess = stored["server"]
    data = server.data_dir
    old = key_file(data)["current"]
    busy = cli(data, "rotate-key")
    assert busy.returncode == 1 and "stop it first" in busy.stderr
    assert key_file(data)["keys"].keys() == {old}, "nothing changed while the service runs"

    server.stop()
    done = cli(data, "rotate-key")
    assert done.returncode == 0, done.stderr
    new = key_file(data)["current"]
    assert new != old and key_file(data)["keys"].keys() == {new}
    assert f"dropped the old key(s) {old}" in done.stdout
    assert key_ids_in_use(data) == {new}
    assert f"enc:v1:{old}".encode() not in on_disk(data), "no value under the old key is left, free pages included"

    server.start()
    assert WORD in transcript(server, stored["conversation"]).lower()
    assert any(WORD in h["text"].lower() for h in search(server, WORD))
    assert [p["name"] for p in server.get("/v1/speakers", uid=UID).json()["items"]] == ["Diane"]


def test_rotate_key_with_the_key_in_the_environment_takes_two_runs(stored: dict[str, Any]):
    server: ServerProcess = stored["server"]
    data = server.data_dir
    server.stop()
    current = next(iter(key_file(data)["keys"].values()))
    before = key_ids_in_use(data)

    first = cli(data, "rotate-key", env={"ENCRYPTION_KEY": current})
    assert first.returncode == 0, first.stderr
    printed = dict(line.split("=", 1) for line in first.stdout.splitlines())
    assert printed["ENCRYPTION_OLD_KEYS"] == current and printed["ENCRYPTION_KEY"] != current
    assert "nothing is re-encrypted yet" in first.stderr and key_ids_in_use(data) == before

    second = cli(data, "rotate-key", env=printed)
    assert second.returncode == 0, second.stderr
    assert "remove it" in second.stdout
    assert key_ids_in_use(data) == {Keyring(decode_key(printed["ENCRYPTION_KEY"])).current_id}

    found = cli(data, "search", WORD, "--uid", UID, "--json", env={"ENCRYPTION_KEY": printed["ENCRYPTION_KEY"]})
    assert found.returncode == 0, found.stderr
    assert any(WORD in h["text"].lower() for h in json.loads(found.stdout))
    stale = cli(data, "search", WORD, "--uid", UID)  # the key file still holds the old key
    assert stale.returncode == 2 and "does not match the stored data" in stale.stderr
