"""``omi-letta doctor``: the data flows of the settings, the privacy mode's refusals, and real backends checked."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from app.ops.doctor import check_all, report
from app.ops.letta_local import LocalLetta
from app.settings import load_settings
from tests.llm_standin import ScriptedLlm
from tests.support import ROOT, RedisServer, free_port


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "LETTA_", "PRIVACY", "VECTOR", "EMBED"))}
    return subprocess.run(
        [sys.executable, "-m", "app", "doctor", *args],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_doctor_shows_where_each_kind_of_data_would_go_and_what_local_mode_refuses(tmp_path):
    env = {
        "DATA_DIR": str(tmp_path),
        "LETTA_BASE_URL": "https://api.letta.com",
        "LETTA_API_KEY": "sk-let-secret",
        "LLM_BASE_URL": "https://api.openai.com/v1",
        "VECTOR_INDEX": "pinecone",
        "PINECONE_API_KEY": "pc-secret",
        "PINECONE_INDEX": "omi",
    }
    done = doctor("--offline", **env)
    assert done.returncode == 1, done.stderr
    out = done.stdout
    assert "PRIVACY_MODE=local" in out and "Refused by PRIVACY_MODE=local" in out
    for host in ("api.letta.com", "api.openai.com", "api.pinecone.io"):
        assert host in out
    assert "audio" in out and "this machine" in out, "speech-to-text stays here"
    assert "secret" not in out, "no credential is printed"
    allowed = doctor("--offline", PRIVACY_MODE="cloud", **env)
    assert allowed.returncode == 0 and "3 backend(s) receive data on other machines" in allowed.stdout


def test_doctor_reaches_letta_and_the_model_with_their_credentials(tmp_path, letta: LocalLetta):
    with ScriptedLlm(api_key="sk-right") as llm:
        env = {
            "DATA_DIR": str(tmp_path),
            "LETTA_BASE_URL": letta.base_url,
            "LLM_BASE_URL": llm.base_url,
            "LLM_MODEL": llm.model,
        }
        good = load_settings({**env, "LLM_API_KEY": "sk-right"}, env_file=None)
        text, ok = report(good, asyncio.run(check_all(good)))
        assert ok, text
        assert f"ok: serves {llm.model}" in text and "ok: reachable, authorized" in text

        wrong = load_settings({**env, "LLM_API_KEY": "sk-wrong"}, env_file=None)
        text, ok = report(wrong, asyncio.run(check_all(wrong)))
        assert not ok and "FAIL: refused LLM_API_KEY (401)" in text

        other = load_settings({**env, "LLM_API_KEY": "sk-right", "LLM_MODEL": "gpt-9"}, env_file=None)
        text, ok = report(other, asyncio.run(check_all(other)))
        assert not ok and "does not serve gpt-9" in text

    gone = load_settings({"DATA_DIR": str(tmp_path), "LLM_BASE_URL": "http://127.0.0.1:9/v1"}, env_file=None)
    text, ok = report(gone, asyncio.run(check_all(gone)))
    assert not ok and "start Ollama, or set LLM_BASE_URL" in text


def test_doctor_checks_redis_and_pgvector_of_several_workers(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    try:
        env = {
            "DATA_DIR": str(tmp_path),
            "LETTA_DELIVERY": "false",
            "REDIS_URL": redis.url,
            "VECTOR_INDEX": "pgvector",
            "PGVECTOR_URL": f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none",
        }
        checked = dict((f.backend, c) for f, c in asyncio.run(check_all(load_settings(env, env_file=None))))
        assert checked["shared state: Redis"].ok is True
        assert checked["vector index: pgvector"].ok is False
        assert "cannot connect" in checked["vector index: pgvector"].detail
    finally:
        redis.stop()
    gone = dict((f.backend, c) for f, c in asyncio.run(check_all(load_settings(env, env_file=None))))
    assert gone["shared state: Redis"].ok is False and "cannot connect" in gone["shared state: Redis"].detail
