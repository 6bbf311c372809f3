"""`omi-letta backup` and `restore` through the CLI, on a real SQLite store, lexical index and key file."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import sqlite3
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.ops.keys import unlock
from app.settings import load_settings
from memory.search.lexical import LexicalIndex
from memory.store.conversation_store import ConversationStore
from tests.integration.test_memory_cli import store_sample
from tests.memory_support import sample_turns

# What a running service leaves in DATA_DIR that is not ours to copy, or not state.
NOT_STATE = ["letta/pgdata/base.bin", "delivery.lock", "server.log", "stray.db-wal", "models/encoder.bin"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no developer .env
    for name in ("DATABASE_URL", "ENCRYPTION_KEY", "ENCRYPTION_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def data_dir(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DATA_DIR with a stored conversation, its lexical index, its key file, a token file and non-state files."""
    data = home / "data"
    monkeypatch.setenv("DATA_DIR", str(data))
    store_sample(data, "alice")  # also makes the key file, and encrypts with its key
    assert (data / "keys" / "omi-letta.key").is_file()

    async def index() -> None:
        lexical = LexicalIndex(data / "index")
        await lexical.upsert(sample_turns("alice"))

    asyncio.run(index())
    (data / "letta-tools.token").write_text("olt_sample-token")
    for name in NOT_STATE:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(os.urandom(64))
    return data


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def backup(home: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[Path, dict[str, Any], str]:
    archive = home / "backups" / "b.tar.gz"
    code, out, err = run(["backup", str(archive), "--json", *extra], capsys)
    assert code == 0, err
    return archive, json.loads(out), err


def conversations(data: Path, uid: str, **env: str) -> list[Any]:
    """The conversations of ``uid`` in ``data``, read with the key of ``data`` (which must open them)."""

    async def read() -> list[Any]:
        store = await ConversationStore.open(f"sqlite+aiosqlite:///{(data / 'omi-letta.db').resolve()}")
        try:
            await unlock(load_settings({"DATA_DIR": str(data), **env}, env_file=None), store.engine)
            found, _ = await store.page(uid, limit=100, offset=0)
            return found
        finally:
            await store.close()

    return asyncio.run(read())


def test_backup_restores_every_state_file_into_an_empty_data_dir(
    home: Path, data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    before = conversations(data_dir, "alice")
    archive, manifest, err = backup(home, capsys)
    files = {f["name"]: f for f in manifest["files"]}
    assert set(files) == {"omi-letta.db", "index/lexical.db", "keys/omi-letta.key", "letta-tools.token"}
    assert [files[n]["kind"] for n in ("omi-letta.db", "index/lexical.db", "keys/omi-letta.key")] == [
        "database",
        "sqlite",
        "key",
    ]
    assert manifest["format_version"] == 1 and manifest["service_version"]
    assert (
        manifest["alembic_revision"]
        == sqlite3.connect(data_dir / "omi-letta.db").execute("SELECT version_num FROM alembic_version").fetchone()[0]
    )
    assert files["keys/omi-letta.key"]["sha256"] == sha256(data_dir / "keys" / "omi-letta.key")
    assert "WARNING: the archive holds the encryption key" in err
    with tarfile.open(archive) as tar:
        assert tar.getnames()[0] == "manifest.json"
        assert sorted(tar.getnames()[1:]) == sorted(f"data/{n}" for n in files)

    target = home / "restored"
    monkeypatch.setenv("DATA_DIR", str(target))
    code, _, err = run(["restore", str(archive)], capsys)
    assert code == 0, err
    assert "omi-letta backfill" in err
    after = conversations(target, "alice")
    assert [c.id for c in after] == [c.id for c in before] and after[0].segments == before[0].segments
    assert (target / "keys" / "omi-letta.key").read_bytes() == (data_dir / "keys" / "omi-letta.key").read_bytes()
    assert (target / "keys" / "omi-letta.key").stat().st_mode & 0o777 == 0o600
    assert (target / "keys").stat().st_mode & 0o777 == 0o700
    assert (target / "letta-tools.token").read_text() == "olt_sample-token"
    for name in ("omi-letta.db", "index/lexical.db"):
        assert sqlite3.connect(target / name).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    hits = LexicalIndex(target / "index").query_sync("alice", "Diane New Jersey", limit=3)
    assert hits and hits[0].text == "This is Diane in New Jersey."
    assert not [n for n in NOT_STATE if (target / n).exists() and n != "delivery.lock"]  # restore takes the lock


def test_no_keys_leaves_the_key_file_out(
    home: Path, data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    archive, manifest, err = backup(home, capsys, "--no-keys")
    assert {f["kind"] for f in manifest["files"]} == {"database", "sqlite", "file"}
    with tarfile.open(archive) as tar:
        assert not [n for n in tar.getnames() if "keys/" in n]
    assert "is not in the archive (--no-keys)" in err and "WARNING" not in err

    monkeypatch.setenv("DATA_DIR", str(home / "restored"))
    code, _, err = run(["restore", str(archive)], capsys)
    assert code == 0, err
    assert f"there is none at {home / 'restored' / 'keys' / 'omi-letta.key'}" in err
    assert not (home / "restored" / "keys").exists(), "no new key is made for data encrypted with another"


def test_restore_refuses_a_data_dir_that_holds_a_database_unless_forced(
    home: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
):
    archive, _, _ = backup(home, capsys)
    store_sample(data_dir, "bob")  # a change after the backup
    before = sha256(data_dir / "omi-letta.db")
    code, _, err = run(["restore", str(archive)], capsys)
    assert code == 1 and "already holds a database" in err and "--force" in err
    assert sha256(data_dir / "omi-letta.db") == before

    code, _, err = run(["restore", str(archive), "--force"], capsys)
    assert code == 0, err
    assert conversations(data_dir, "bob") == [], "the store is the backup's again"
    assert len(conversations(data_dir, "alice")) == 1


def _rewrite(archive: Path, dest: Path, change: Callable[[str, bytes], tuple[str, bytes] | None]) -> None:
    """Copy ``archive`` member by member through ``change(name, data)``; None drops the member."""
    with tarfile.open(archive) as src, tarfile.open(dest, "w:gz") as out:
        for member in src.getmembers():
            f = src.extractfile(member)
            assert f is not None
            changed = change(member.name, f.read())
            if changed is None:
                continue
            info = tarfile.TarInfo(changed[0])
            info.size = len(changed[1])
            out.addfile(info, io.BytesIO(changed[1]))


def _flip_a_byte(name: str, data: bytes) -> tuple[str, bytes]:
    if name == "data/index/lexical.db":
        data = data[:-100] + bytes([data[-100] ^ 1]) + data[-99:]
    return name, data


def _newer_format(name: str, data: bytes) -> tuple[str, bytes]:
    if name == "manifest.json":
        data = json.dumps({**json.loads(data), "format_version": 2}).encode()
    return name, data


def _escape(name: str, data: bytes) -> tuple[str, bytes]:
    if name != "manifest.json":
        return name, data
    manifest = json.loads(data)
    manifest["files"][-1]["name"] = "../outside"
    return name, json.dumps(manifest).encode()


BAD = {
    "tampered": (_flip_a_byte, "does not match its manifest"),
    "newer format": (_newer_format, "backup format version 2, made by a newer omi-letta"),
    "missing file": (lambda n, d: None if n == "data/letta-tools.token" else (n, d), "lacks letta-tools.token"),
    "extra file": (lambda n, d: ("data/index/vectors.db", d) if n == "data/letta-tools.token" else (n, d), "not list"),
    "outside DATA_DIR": (_escape, "names a file outside DATA_DIR"),
}


@pytest.mark.parametrize("kind", [*BAD, "truncated", "not gzip"])
def test_a_bad_archive_is_refused_before_anything_is_written(
    kind: str, home: Path, data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    archive, _, _ = backup(home, capsys)
    bad = home / "bad.tar.gz"
    if kind == "truncated":
        bad.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
        expected = "corrupt or truncated"
    elif kind == "not gzip":
        bad.write_bytes(b"this is not an archive" * 100)
        expected = "corrupt or truncated"
    else:
        change, expected = BAD[kind]
        _rewrite(archive, bad, change)
    target = home / "restored"
    monkeypatch.setenv("DATA_DIR", str(target))
    code, _, err = run(["restore", str(bad)], capsys)
    assert code == 1
    assert expected in err
    assert not target.exists(), "nothing is written"
    assert not (home / "outside").exists()


def test_restore_of_a_missing_archive_says_so(home: Path, capsys: pytest.CaptureFixture[str], monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(home / "data"))
    code, _, err = run(["restore", str(home / "nope.tar.gz")], capsys)
    assert code == 1 and "no such archive" in err


def test_postgres_database_is_refused_and_the_rest_can_be_archived(
    home: Path, data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://omi@127.0.0.1:1/omi")
    code, _, err = run(["backup", str(home / "b.tar.gz")], capsys)
    assert code == 1 and "pg_dump" in err and "--skip-database" in err
    assert not (home / "b.tar.gz").exists()

    _, manifest, _ = backup(home, capsys, "--skip-database")
    names = {f["name"] for f in manifest["files"]}
    assert "index/lexical.db" in names and "keys/omi-letta.key" in names
    assert "omi-letta.db" not in names and manifest["alembic_revision"] is None


def test_a_key_from_the_environment_is_said_to_be_outside_the_archive(
    home: Path, data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
    _, _, err = backup(home, capsys)
    assert "comes from ENCRYPTION_KEY and is not in the archive" in err


def test_restore_warns_when_the_configured_key_cannot_open_the_data(
    home: Path, data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    archive, _, _ = backup(home, capsys)
    monkeypatch.setenv("DATA_DIR", str(home / "restored"))
    monkeypatch.setenv("ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())  # not the data's key
    code, _, err = run(["restore", str(archive)], capsys)
    assert code == 0, err
    assert "WARNING: the encryption key does not match the stored data" in err


def test_a_key_file_outside_data_dir_goes_back_to_where_encryption_key_file_points(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    data = home / "data"
    monkeypatch.setenv("DATA_DIR", str(data))
    monkeypatch.setenv("ENCRYPTION_KEY_FILE", str(home / "vault" / "omi.key"))
    store_sample(data, "alice")  # makes the key file in the vault
    archive, manifest, _ = backup(home, capsys)
    assert {f["name"] for f in manifest["files"] if f["kind"] == "key"} == {"keys/omi.key"}

    target, vault = home / "restored", home / "vault2" / "omi.key"
    monkeypatch.setenv("DATA_DIR", str(target))
    monkeypatch.setenv("ENCRYPTION_KEY_FILE", str(vault))
    code, _, err = run(["restore", str(archive)], capsys)
    assert code == 0, err
    assert vault.read_bytes() == (home / "vault" / "omi.key").read_bytes()
    assert not (target / "keys").exists()
    assert len(conversations(target, "alice", ENCRYPTION_KEY_FILE=str(vault))) == 1
