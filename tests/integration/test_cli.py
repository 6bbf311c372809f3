"""The `omi-letta` command: ingest, simulate and serve, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.support import SHARED_DATA, ServerProcess, Turn, speak, token, wer


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DATA_DIR": str(cwd / "data"), **(env or {})}
    full_env.pop("ADMIN_KEY", None)
    full_env.pop("LOCAL_DEVELOPMENT", None)
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def encoded(dialogue: tuple[Path, list[Turn]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The dialogue as WAV, FLAC, MP3 and Ogg/Opus."""
    path, _ = dialogue
    audio, rate = soundfile.read(path, dtype="float32")
    folder = tmp_path_factory.mktemp("formats")
    out = {"wav": path}
    for ext, fmt, subtype in [("flac", "FLAC", None), ("mp3", "MP3", None), ("ogg", "OGG", "OPUS")]:
        target = folder / f"dialogue.{ext}"
        # Opus in Ogg is 48 kHz inside; libsndfile resamples nothing, so give it 48 kHz.
        data, sr = (np.repeat(audio, 3), 48_000) if ext == "ogg" else (audio, rate)
        soundfile.write(target, data, sr, format=fmt, subtype=subtype)
        out[ext] = target
    return out


def test_ingest_every_file_format_to_json(encoded: dict[str, Path], dialogue: tuple[Path, list[Turn]], tmp_path: Path):
    _, truth = dialogue
    done = _run("ingest", *map(str, encoded.values()), "--uid", "batch", "--json", "--no-deliver", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    conversations = json.loads(done.stdout)
    assert len(conversations) == len(encoded)
    reference = " ".join(t.text for t in truth)
    for conversation in conversations:
        assert set(conversation) == {"id", "started_at", "finished_at", "segments"}
        assert conversation["started_at"] < conversation["finished_at"]
        for seg in conversation["segments"]:
            assert set(seg) == {"start", "end", "text", "speaker", "speaker_id", "speaker_name", "is_user", "person_id"}
        text = " ".join(s["text"] for s in conversation["segments"])
        assert wer(reference, text) <= 0.3, text
    # They are stored: a server over the same DATA_DIR lists them for that uid.
    server = ServerProcess(tmp_path / "data").start()
    try:
        listed = server.get("/v1/conversations/page", uid="batch").json()
        assert {c["id"] for c in listed["items"]} == {c["id"] for c in conversations}
        assert all(c["status"] == "completed" for c in listed["items"])
    finally:
        server.stop()


def test_ingest_of_silence_stores_nothing(tmp_path: Path):
    silence = tmp_path / "quiet.wav"
    soundfile.write(silence, np.zeros(16_000 * 5, dtype=np.float32), 16_000)
    files = [str(silence)]
    if (SHARED_DATA / "silero/no_speech_8s.opus").exists():
        files.append(str(SHARED_DATA / "silero/no_speech_8s.opus"))
    done = _run("ingest", *files, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_ingest_errors_are_clear(tmp_path: Path):
    missing = _run("ingest", str(tmp_path / "nope.wav"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio")
    bad = _run("ingest", str(junk), cwd=tmp_path)
    assert bad.returncode == 1 and "cannot read audio file" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_simulate_prints_segments_and_json(server: ServerProcess, dialogue: tuple[Path, list[Turn]], tmp_path: Path):
    path, _ = dialogue
    args = ["simulate", str(path), "--url", server.ws, "--token", token("cli"), "--codec", "opus", "--speed", "4"]
    live = _run(*args, cwd=tmp_path)
    assert live.returncode == 0, live.stderr
    assert "SPEAKER_0:" in live.stdout
    as_json = _run(*args, "--json", cwd=tmp_path)
    segments = json.loads(as_json.stdout)
    assert segments and len({s["id"] for s in segments}) == len(segments)
    assert "SPEAKER_0:" in as_json.stderr  # live lines go to stderr when stdout is JSON


def test_simulate_reports_a_refused_token(server: ServerProcess, dialogue: tuple[Path, list[Turn]], tmp_path: Path):
    path, _ = dialogue
    done = _run("simulate", str(path), "--url", server.ws, "--token", "wrong", cwd=tmp_path)
    assert done.returncode == 1
    assert "1008" in done.stderr and "Invalid authorization token" in done.stderr


def test_serve_refuses_to_start_without_a_way_to_authenticate(tmp_path: Path):
    done = _run("serve", "--port", "1", cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "ADMIN_KEY" in done.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORT", "eighty", "PORT='eighty' is not a valid int"),
        ("STT_COMPUTE_TYPE", "int3", "STT_COMPUTE_TYPE='int3' is not one of"),
        ("VAD_THRESHOLD", "1.5", "VAD_THRESHOLD=1.5 is out of range"),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL must start with"),
    ],
)
def test_a_wrong_setting_stops_startup_naming_it(tmp_path: Path, name: str, value: str, message: str):
    done = _run("serve", cwd=tmp_path, env={"LOCAL_DEVELOPMENT": "true", name: value}, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_help_lists_every_command(tmp_path: Path):
    done = _run("--help", cwd=tmp_path)
    for command in ("serve", "ingest", "enroll", "speakers", "simulate"):
        assert command in done.stdout
    sim = _run("simulate", "--help", cwd=tmp_path)
    assert "--codec" in sim.stdout and "opus_fs320" in sim.stdout


def test_enroll_and_list_voice_profiles(tmp_path: Path):
    sentence = "The quick brown fox jumps over the lazy dog while the farmer watches from the barn."
    mine, theirs = tmp_path / "me.wav", tmp_path / "diane.mp3"
    soundfile.write(mine, speak(sentence, "en-us", mine), 16_000)
    soundfile.write(theirs, speak(sentence, "en-us+f3", theirs), 16_000, format="MP3")
    me = _run("enroll", str(mine), "--me", "--uid", "voices", "--json", cwd=tmp_path)
    assert me.returncode == 0, me.stderr
    wearer = json.loads(me.stdout)
    assert (wearer["name"], wearer["is_user"]) == ("me", True) and wearer["seconds"] > 3
    diane = _run("enroll", str(theirs), "--name", "Diane", "--uid", "voices", cwd=tmp_path)
    assert diane.returncode == 0, diane.stderr
    assert diane.stdout.startswith("enrolled Diane from ")
    again = _run("enroll", str(mine), "--me", "--uid", "voices", "--json", cwd=tmp_path)
    assert json.loads(again.stdout)["id"] == wearer["id"]  # the wearer's profile improves; no second one
    listed = _run("speakers", "--uid", "voices", "--json", cwd=tmp_path)
    assert [(p["name"], p["is_user"]) for p in json.loads(listed.stdout)] == [("me", True), ("Diane", False)]
    table = _run("speakers", "--uid", "voices", cwd=tmp_path)
    assert wearer["id"] in table.stdout and "Diane" in table.stdout
    # A server over the same DATA_DIR serves the same profiles.
    server = ServerProcess(tmp_path / "data").start()
    try:
        served = server.get("/v1/speakers", uid="voices").json()["items"]
        assert [p["name"] for p in served] == ["me", "Diane"]
    finally:
        server.stop()


def test_enroll_errors_are_clear(tmp_path: Path):
    silence, junk = tmp_path / "quiet.wav", tmp_path / "junk.wav"
    soundfile.write(silence, np.zeros(16_000 * 4, dtype=np.float32), 16_000)
    junk.write_bytes(b"this is not audio")
    neither = _run("enroll", str(silence), cwd=tmp_path)
    assert neither.returncode == 2 and "one of the arguments --name --me is required" in neither.stderr
    both = _run("enroll", str(silence), "--me", "--name", "Diane", cwd=tmp_path)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    missing = _run("enroll", str(tmp_path / "nope.wav"), "--me", cwd=tmp_path)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    blank = _run("enroll", str(silence), "--name", " ", cwd=tmp_path)
    assert blank.returncode == 2 and "a speaker name must not be empty" in blank.stderr
    bad = _run("enroll", str(junk), "--me", cwd=tmp_path)
    assert bad.returncode == 1 and "cannot read audio file" in bad.stderr
    quiet = _run("enroll", str(silence), "--me", cwd=tmp_path)
    assert quiet.returncode == 1 and "only 0.0 s of speech found" in quiet.stderr
    for done in (bad, quiet):
        assert "Traceback" not in done.stderr
    assert json.loads(_run("speakers", "--json", cwd=tmp_path).stdout) == []
