"""The encryption keys: read from ``ENCRYPTION_KEY`` or the key file, checked against the stored data, installed.

:func:`unlock` is the one seam between the settings and the storage layer's keyring
(:func:`memory.store.crypto.install`). ``Services.start`` calls it right after opening the database,
and so do the command-line tools that read or write stored data, before anything else touches
it. It fails with a :class:`SettingsError` naming the setting when the key cannot open what is
stored, so no process ever runs on a wrong key.

The key file is JSON, ``{"version": 1, "current": <key id>, "keys": {<key id>: <base64 key>}}``,
written atomically with mode 0600 in a directory of mode 0700.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from app.settings import Settings, SettingsError
from core.errors import EncryptionError, MissingKeyError
from memory.rekey import samples
from memory.store.crypto import Keyring, decode_key, encode_key, install

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["key_source", "read_keyring", "unlock", "write_key_file"]

FILE_VERSION = 1


def key_source(settings: Settings) -> str:
    """Where the key comes from, as a user would set it: ``ENCRYPTION_KEY`` or ``ENCRYPTION_KEY_FILE=<path>``."""
    if settings.encryption.key:
        return "ENCRYPTION_KEY"
    return f"ENCRYPTION_KEY_FILE={settings.encryption_key_file}"


def read_keyring(settings: Settings) -> Keyring | None:
    """The configured keyring (with ENCRYPTION_OLD_KEYS), or None when there is no key yet (no key file).

    Raises:
        SettingsError: the key file cannot be read or is malformed.
    """
    old = [decode_key(k) for k in settings.encryption.old_key_list]
    if settings.encryption.key:
        return Keyring(decode_key(settings.encryption.key), old)
    path = settings.encryption_key_file
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        keys = {kid: decode_key(value) for kid, value in data["keys"].items()}
        current = keys[data["current"]]
        if data.get("version") != FILE_VERSION:
            raise ValueError(f"version {data.get('version')!r} is not {FILE_VERSION}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SettingsError(f"ENCRYPTION_KEY_FILE={path} cannot be read as a key file: {exc}") from None
    return Keyring(current, [k for kid, k in keys.items() if kid != data["current"]] + old)


def write_key_file(path: Path, keyring: Keyring, *, exclusive: bool = False) -> None:
    """Write every key of ``keyring`` to the key file ``path``, atomically, with mode 0600.

    Raises:
        FileExistsError: ``exclusive`` and the file exists (another process made it first).
    """
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    body = {
        "version": FILE_VERSION,
        "current": keyring.current_id,
        "keys": {kid: encode_key(key) for kid, key in keyring.by_id().items()},
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(body, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(temporary, path)
            temporary.unlink()
        else:
            os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def unlock(settings: Settings, engine: AsyncEngine) -> Keyring:
    """Load the key, check it opens what is stored (the database at ``engine``, the index files), install it.

    With no ENCRYPTION_KEY and no key file, a key file with a new key is written, unless
    something encrypted is stored already (its key is missing: that is an error).

    Raises:
        SettingsError: the key cannot decrypt stored data, or there is none for data that is encrypted;
            the message names the setting.
    """
    keyring = read_keyring(settings)
    found = await samples(engine, settings.server.data_dir / "index")
    source = key_source(settings)
    if keyring is None:
        if found:
            place, value = found[0]
            raise SettingsError(
                f"{place} is encrypted, but there is no key: {source} does not exist and ENCRYPTION_KEY is "
                "empty. Restore the key file that belongs to this DATA_DIR (a backup has it under keys/), or set "
                "ENCRYPTION_KEY to the key the data was written with"
            )
        keyring = Keyring.generate()
        try:
            write_key_file(settings.encryption_key_file, keyring, exclusive=True)
        except FileExistsError:  # another process starting at the same moment made one: use it
            keyring = read_keyring(settings)
            assert keyring is not None
    for place, value in found:
        try:
            if isinstance(value, bytes):
                keyring.decrypt_bytes(value, place)
            else:
                keyring.decrypt_text(value, place)
        except MissingKeyError as exc:
            raise SettingsError(
                f"the encryption key does not match the stored data: {place} was encrypted with key {exc.key_id}, "
                f"and {source} holds only {', '.join(keyring.ids)}. Set {source.partition('=')[0]} to the key the "
                "data was written with (or add the old one to ENCRYPTION_OLD_KEYS while rotating)"
            ) from None
        except EncryptionError as exc:
            raise SettingsError(
                f"the stored data cannot be decrypted with the key from {source}: {exc.detail}"
            ) from None
    install(keyring)
    return keyring
