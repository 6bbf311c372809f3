"""``omi-letta doctor``: the data flows of the settings, the privacy mode's refusals, and real backends checked."""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from app.ops.doctor import check_all, report
from app.ops.letta_local import LocalLetta
from app.settings import load_settings
from tests.integration.test_delivery import (
    agent_of,
    as_conversation,
    client_of,
    eventually_exactly_once,
    passages_of,
    serve,
    wait_drained,
)
from tests.integration.test_webhooks import MEMORY, api_token, hook_url
from tests.llm_standin import ScriptedLlm
from tests.support import ADMIN_KEY, ROOT, AlertReceiver, RedisServer, ServerProcess, free_port


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
    # Letta, its model, Pinecone, and the model that summarises each closed conversation (UNDERSTAND_CONVERSATIONS).
    assert allowed.returncode == 0 and "4 backend(s) receive data on other machines" in allowed.stdout
    assert "conversation summaries and facts" in allowed.stdout


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


def test_doctor_reports_a_users_second_agent_and_merge_agents_merges_it(tmp_path: Path, letta: LocalLetta):
    """Issue "Always on": an agent made twice for one user (as two workers once did) is reported, and merged:
    the kept one gets the other's own notes and the user's conversations, exactly once; the other is deleted."""
    server = serve(tmp_path / "data", letta)
    uid = f"twice-{uuid.uuid4().hex[:8]}"
    client = client_of(letta)
    env = {"DATA_DIR": str(server.data_dir), "ADMIN_KEY": ADMIN_KEY, "LETTA_BASE_URL": letta.base_url}
    try:
        memory = copy.deepcopy(MEMORY)
        reply = httpx.post(hook_url(server, "memory-created", api_token(server, uid), f"uid={uid}"), json=memory)
        assert reply.status_code == 200, reply.text
        wait_drained(server)
        used = agent_of(client, uid)  # the service's, holding the conversation
        first = client.agents.retrieve(used)
        second = client.agents.create(
            name=f"omi-{uid}",
            tags=["omi", f"omi-uid:{uid}"],
            llm_config=first.llm_config,
            embedding_config=first.embedding_config,
        )
        client.agents.passages.create(second.id, text="The wearer's sister is called Ruth.", tags=["note"])
        client.agents.passages.create(used, text="The wearer likes long walks.", tags=["note"])

        found = doctor(**env)
        assert f"uid {uid} has 2 Letta agents" in found.stdout and f"merge-agents --uid {uid}" in found.stdout
        dry = merge(server, uid, "--keep", second.id, "--dry-run")
        assert dry.returncode == 0 and f"keeping {second.id}" in dry.stdout, dry.stderr
        assert {a.id for a in client.agents.list(tags=[f"omi-uid:{uid}"], match_all_tags=True)} == {used, second.id}

        done = merge(server, uid, "--keep", second.id)  # keep the newer: it lacks the conversation
        assert done.returncode == 0, done.stdout + done.stderr
        wait_drained(server)
        assert [a.id for a in client.agents.list(tags=[f"omi-uid:{uid}"], match_all_tags=True)] == [second.id]
        [listed] = server.get("/v1/conversations/page", uid=uid).json()["items"]
        stored = as_conversation(server.get(f"/v1/conversations/{listed['id']}", uid=uid).json(), uid)
        eventually_exactly_once(client, second.id, stored)  # the running service found the kept agent again
        notes = {p.text: p.tags for p in passages_of(client, second.id) if "note" in (p.tags or [])}
        assert set(notes) == {"The wearer's sister is called Ruth.", "The wearer likes long walks."}
        assert f"merged-from:{used}" in notes["The wearer likes long walks."]
        assert f"uid {uid} has" not in doctor(**env).stdout
    finally:
        server.stop()


def merge(server: ServerProcess, uid: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "merge-agents", "--uid", uid, *args],
        cwd=server.data_dir.parent,
        env={**os.environ, **server.env, "DATA_DIR": str(server.data_dir), "ADMIN_KEY": ADMIN_KEY},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_doctor_lists_alerts_as_a_flow_local_mode_allows_and_reaches_the_receiver_without_alerting(tmp_path):
    receiver = AlertReceiver().start()
    try:
        env = {"DATA_DIR": str(tmp_path), "LETTA_DELIVERY": "false", "ALERT_WEBHOOK_URL": receiver.url}
        settings = load_settings(env, env_file=None)  # PRIVACY_MODE=local: not refused
        checked = {f.backend: (f, c) for f, c in asyncio.run(check_all(settings))}
        flow, check = checked["alerts: webhook"]
        assert "no transcript" in flow.data and check.ok is True and "no alert was sent" in check.detail
        assert receiver.bodies == []
        text, _ = report(settings, list(checked.values()))
        assert "Refused" not in text and "alerts: webhook" in text
    finally:
        receiver.stop()
    gone = dict((f.backend, c) for f, c in asyncio.run(check_all(load_settings(env, env_file=None))))
    assert gone["alerts: webhook"].ok is False and "unreachable" in gone["alerts: webhook"].detail
