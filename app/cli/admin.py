"""Keeping the data: API tokens, the audit log, backups, and rotating the encryption key."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.settings import load_settings

if TYPE_CHECKING:
    pass

from app.cli.cli_support import Commands, Handler, msgspec_builtins, print_json, progress_bar, when

__all__ = ["HANDLERS", "add_parsers"]


def add_parsers(commands: Commands) -> None:
    """Add this group's commands."""
    tokens = commands.add_parser(
        "token",
        help="create, list or revoke a user's API tokens",
        description="API tokens let clients other than the device (scripts, MCP clients, chat) call the HTTP API as "
        "one user: `Authorization: Bearer olt_...`. A token is shown once, when created; only its hash is stored.",
    )
    token_verbs = tokens.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = token_verbs.add_parser("create", help="make a token for a user and print it (once)")
    create.add_argument("--uid", required=True, help="the user the token acts as")
    create.add_argument("--name", default="", help="what the token is for, to tell tokens apart")
    create.add_argument("--json", action="store_true", help="print the token and its record as JSON")
    token_list = token_verbs.add_parser("list", help="list tokens (never the tokens themselves)")
    token_list.add_argument("--uid", help="only this user's tokens")
    token_list.add_argument("--json", action="store_true", help="print the tokens as JSON")
    revoke = token_verbs.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id", metavar="ID")

    audit = commands.add_parser(
        "audit",
        help="export the audit log: who read, searched, changed or deleted which conversation, when, from where",
        description="Print the audit log, oldest first: for each access its time, the user (empty: a refused "
        "token, or this command), the action, the conversation, the route or tool, the client's address and "
        "the status. It never holds what was said or searched for. Reading it is itself recorded (export).",
    )
    audit.add_argument("--uid", help="only what this user did")
    audit.add_argument("--since", type=when, metavar="WHEN", help="only entries at or after this (ISO date/time)")
    audit.add_argument("--until", type=when, metavar="WHEN", help="only entries at or before this (ISO date/time)")
    audit_format = audit.add_mutually_exclusive_group()
    audit_format.add_argument("--json", action="store_true", help="print the entries as JSON to stdout")
    audit_format.add_argument("--csv", action="store_true", help="print the entries as CSV (times in ISO 8601)")

    backup = commands.add_parser(
        "backup",
        help="write one archive of the database, the memory index and the encryption keys (safe while serving)",
        description="Write one .tar.gz of DATA_DIR's state: the SQLite database and the local memory index, each "
        "copied as one consistent snapshot while `omi-letta serve` goes on writing, the encryption key file "
        "(DATA_DIR/keys) and the other small state files, with a manifest of checksums. The local Letta "
        "server's data (DATA_DIR/letta) and model caches are not in it: `omi-letta backfill` refills Letta "
        "after a restore. THE KEYS ARE INCLUDED BY DEFAULT: such an archive decrypts the data by itself, so "
        "keep it as safe as the data, or give --no-keys and keep the key apart. With a PostgreSQL "
        "DATABASE_URL, back the database up with pg_dump.",
    )
    backup.add_argument(
        "path",
        nargs="?",
        type=Path,
        metavar="PATH",
        help="the archive to write, or a folder for it (default: ./omi-letta-backup-<UTC time>.tar.gz)",
    )
    backup.add_argument(
        "--no-keys",
        action="store_true",
        help="leave the encryption key file out; the archive is then unreadable without the key kept elsewhere",
    )
    backup.add_argument(
        "--skip-database",
        action="store_true",
        help="leave the database out: for a PostgreSQL DATABASE_URL, whose data `pg_dump` backs up",
    )
    backup.add_argument("--json", action="store_true", help="print the manifest as JSON to stdout")

    restore = commands.add_parser(
        "restore",
        help="restore an `omi-letta backup` archive into an empty DATA_DIR",
        description="Check every file of ARCHIVE against its manifest before writing anything, then write the "
        "database, the memory index, the keys and the state files into DATA_DIR (each written beside its place "
        "and renamed there), and migrate the database to this version's schema. A DATA_DIR that holds a "
        "database is refused unless --force; stop `omi-letta serve` first. The local Letta server's data is "
        "not in backups: `omi-letta backfill` delivers every conversation to Letta again, idempotently.",
    )
    restore.add_argument("archive", type=Path, metavar="ARCHIVE", help="an archive written by `omi-letta backup`")
    restore.add_argument(
        "--force", action="store_true", help="replace the database and the files the archive holds if they exist"
    )
    restore.add_argument("--json", action="store_true", help="print what was restored as JSON to stdout")

    rotate = commands.add_parser(
        "rotate-key",
        help="re-encrypt the stored data under a new encryption key, then drop the old key",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Re-encrypt everything kept encrypted at rest (transcript text, summaries and voice profiles in
the database; the text and vectors of the local memory index) under a new key, in batches with
a progress bar, then drop the old key once nothing uses it. Values stored before encryption
existed are encrypted too. The SQLite files are compacted at the end (VACUUM), so no earlier
copy of a value stays in their free pages; with PostgreSQL, run VACUUM FULL for that.

Stop `omi-letta serve` (and other omi-letta commands) first: this refuses to run while a service
holds DATA_DIR/delivery.lock. A service on another machine sharing a PostgreSQL DATABASE_URL
cannot be seen from here: stop it by hand.

With the key file (ENCRYPTION_KEY_FILE, default DATA_DIR/keys/omi-letta.key) one run does it
all: the new key is written into the file beside the old one before any value uses it, and the
old one is removed at the end. If it is interrupted, run it again.

With ENCRYPTION_KEY from the environment it takes two runs. The first only prints a new
ENCRYPTION_KEY, and ENCRYPTION_OLD_KEYS holding the current key; set both (a restarted service
reads old values through ENCRYPTION_OLD_KEYS). The second run, with both set, re-encrypts under
the new key and says when ENCRYPTION_OLD_KEYS can be removed.""",
    )
    rotate.add_argument(
        "--no-new-key",
        action="store_true",
        help="re-encrypt under the current key instead of a new one: encrypts data stored before encryption "
        "existed, or finishes an interrupted rotation",
    )


def _token(args: argparse.Namespace) -> int:
    from core.conversation import iso
    from core.errors import NotFoundError
    from memory.store.conversation_store import ConversationStore
    from memory.store.tokens import TokenStore

    settings = load_settings()

    async def run() -> Any:
        store = await ConversationStore.open(settings.database_url)
        tokens = TokenStore(store.engine)
        try:
            if args.verb == "create":
                return await tokens.create(args.uid, args.name)
            if args.verb == "revoke":
                return await tokens.revoke(args.id)
            return await tokens.list(args.uid)
        finally:
            await store.close()

    try:
        result = asyncio.run(run())
    except NotFoundError as exc:
        print(f"omi-letta token: {exc.detail}", file=sys.stderr)
        return 1
    if args.verb == "create":
        token, record = result
        if args.json:
            print_json({"token": token, **msgspec_builtins(record)})
        else:
            print(token)
            print(f"API token {record.id} for uid {record.uid}; it is not shown again.", file=sys.stderr)
        return 0
    if args.verb == "revoke":
        print(f"revoked token {result.id} ({result.name}) of uid {result.uid}")
        return 0
    if args.json:
        print_json([msgspec_builtins(t) for t in result])
        return 0
    if not result:
        print("no API tokens; make one with `omi-letta token create --uid U`", file=sys.stderr)
    for t in result:
        state = f"revoked {iso(t.revoked_at)[:19]}" if t.revoked_at else "active"
        used = iso(t.last_used_at)[:19] if t.last_used_at else "never"
        print(f"{t.id}  {t.hint}…  uid {t.uid}  {t.name}  created {iso(t.created_at)[:19]}  used {used}  {state}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    import csv
    import getpass

    from core.conversation import iso
    from memory.store.audit_log import AuditEntry, AuditLog
    from memory.store.conversation_store import ConversationStore

    settings = load_settings()

    async def run() -> list[dict[str, Any]] | None:
        store = await ConversationStore.open(settings.database_url)
        audit = AuditLog(store.engine)
        try:
            found = await audit.entries(uid=args.uid, since=args.since, until=args.until)
            try:
                operator = f"cli:{getpass.getuser()}"
            except (KeyError, OSError):  # no user name for this process's uid
                operator = "cli"
            audit.record(uid="", action="export", route="cli:audit", client=operator, status=200)
            recorded = await audit.flush()  # no export that is not itself on record
            await audit.close()
        finally:
            await store.close()
        return [msgspec_builtins(e) for e in found] if recorded else None

    entries = asyncio.run(run())
    if entries is None:
        print("omi-letta audit: could not record this export in the audit log; nothing printed", file=sys.stderr)
        return 1
    if args.json:
        print_json(entries)
        return 0
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=AuditEntry.__struct_fields__, lineterminator="\n")
        writer.writeheader()
        writer.writerows({**e, "at": iso(e["at"])} for e in entries)
        return 0
    if not entries:
        print("the audit log holds no such entry", file=sys.stderr)
    for e in entries:
        print(
            f"{e['id']:>7}  {iso(e['at'])[:19]}  {e['action']:<12}  uid {e['uid'] or '-'}  "
            f"conv {e['conversation_id'] or '-'}  {e['route']}  from {e['client'] or '-'}  {e['status']}"
        )
    return 0


def _backup(args: argparse.Namespace) -> int:
    from app.ops.backup import create_backup, default_archive_name
    from app.ops.backup_archive import BackupError

    settings = load_settings(enforce_privacy=False)  # it sends nothing anywhere
    dest = args.path or Path(default_archive_name())
    if dest.is_dir():
        dest = dest / default_archive_name()
    bar, hook = progress_bar()
    try:
        with bar:
            report = create_backup(settings, dest, keys=not args.no_keys, database=not args.skip_database, hook=hook)
    except BackupError as exc:
        print(f"omi-letta backup: {exc.detail}", file=sys.stderr)
        return 1
    manifest = report.manifest
    if args.json:
        print_json(json.loads(manifest.to_json()))
    size = report.path.stat().st_size
    print(
        f"backed up {len(manifest.files)} file(s) to {report.path} ({size / 1e6:.1f} MB; schema "
        f"{manifest.alembic_revision or '-'})",
        file=sys.stderr,
    )
    keys = [f.name for f in manifest.files if f.kind == "key"]
    if keys:
        print(
            f"WARNING: the archive holds the encryption key ({', '.join(keys)}): whoever has it can read every "
            "conversation. Keep it as safe as the data, or back up with --no-keys and keep the key apart.",
            file=sys.stderr,
        )
    for left in report.keys_left_out:
        print(
            f"the encryption key {left} is not in the archive (--no-keys): keep it apart; without it the archive "
            "cannot be read",
            file=sys.stderr,
        )
    if report.key_from_env:
        print(
            "the encryption key comes from ENCRYPTION_KEY and is not in the archive: keep it apart; without it the "
            "archive cannot be read",
            file=sys.stderr,
        )
    return 0


def _restore(args: argparse.Namespace) -> int:
    from app.ops.backup import restore_backup
    from app.ops.backup_archive import BackupError

    settings = load_settings(enforce_privacy=False)  # it sends nothing anywhere
    bar, hook = progress_bar()
    try:
        with bar:
            report = restore_backup(settings, args.archive, force=args.force, hook=hook)
    except BackupError as exc:
        print(f"omi-letta restore: {exc.detail}", file=sys.stderr)
        return 1
    manifest = report.manifest
    if args.json:
        print_json(
            {
                "archive": str(args.archive),
                "created_at": manifest.created_at,
                "service_version": manifest.service_version,
                "alembic_revision": manifest.alembic_revision,
                "revision": report.revision,
                "files": [str(p) for p in report.written],
            }
        )
    print(
        f"restored {len(report.written)} file(s) into {settings.server.data_dir} from a backup of "
        f"{manifest.created_at} (omi-letta {manifest.service_version}, schema {manifest.alembic_revision or '-'}"
        f"{f', now {report.revision}' if report.revision != manifest.alembic_revision else ''})",
        file=sys.stderr,
    )
    if not manifest.has_database:
        print("the archive holds no database (made with --skip-database): restore it with pg_restore", file=sys.stderr)
    if report.key_problem is not None:
        print(f"WARNING: {report.key_problem}", file=sys.stderr)
    if report.key_missing is not None:
        print(
            f"the archive holds no encryption key and there is none at {report.key_missing}: put the key file "
            "back there, or set ENCRYPTION_KEY, before `omi-letta serve`; the data cannot be read without it",
            file=sys.stderr,
        )
    print(
        "Letta: the local Letta server's data is not in backups. Once Letta runs, `omi-letta backfill` delivers "
        "every conversation to it again; delivery is idempotent, so what the agent holds is left alone.",
        file=sys.stderr,
    )
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from app.ops.keys import unlock, write_key_file
    from memory.delivery.deliverer import DeliveryLock
    from memory.rekey import census, compact, count_rows, rotate
    from memory.store.conversation_store import ConversationStore
    from memory.store.crypto import Keyring, encode_key, install

    settings = load_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    name = "omi-letta rotate-key"
    from_env = bool(settings.encryption.key)
    key_file = settings.encryption_key_file
    index_dir = settings.server.data_dir / "index"
    lock = DeliveryLock(settings.server.data_dir)

    async def run() -> int:
        store = await ConversationStore.open(settings.database_url)
        try:
            keyring = await unlock(settings, store.engine)  # the keys in use all open what is stored
            if from_env and not args.no_new_key and not settings.encryption.old_key_list:
                print(f"ENCRYPTION_KEY={encode_key(Keyring.new_key())}")
                print(f"ENCRYPTION_OLD_KEYS={','.join(encode_key(k) for k in keyring.by_id().values())}")
                print(
                    f"{name}: nothing is re-encrypted yet. Keep the new ENCRYPTION_KEY safe, set both variables "
                    "above, stop the service and run `omi-letta rotate-key` again with them set.",
                    file=sys.stderr,
                )
                return 0
            if not lock.acquire():
                print(
                    f"{name}: a running `omi-letta serve` uses {settings.server.data_dir} (it holds {lock.path}); "
                    "stop it first",
                    file=sys.stderr,
                )
                return 1
            if not from_env and not args.no_new_key:
                keyring = Keyring(Keyring.new_key(), keyring.by_id().values())
                write_key_file(key_file, keyring)  # before any value uses the new key
                print(f"new key {keyring.current_id} added to {key_file}", file=sys.stderr)
            install(keyring)
            total = await count_rows(store.engine, index_dir)
            with tqdm(total=total, unit="row", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
                rewritten = await rotate(store.engine, index_dir, progress=bar.update)
            found = await census(store.engine, index_dir)
            left = {place: n for place, used in found.items() if (n := sum(used.values()) - used[keyring.current_id])}
            if left:
                print(f"{name}: values still not under key {keyring.current_id}: {left}; run it again", file=sys.stderr)
                return 1
            await compact(store.engine, index_dir)  # no old copy stays in the files' free pages
            print(f"re-encrypted {rewritten} value(s) of {total} row(s); everything uses key {keyring.current_id}")
            dropped = [kid for kid in keyring.ids if kid != keyring.current_id]
            if dropped and not from_env:
                write_key_file(key_file, Keyring(keyring.current))
                print(f"dropped the old key(s) {', '.join(dropped)} from {key_file}")
            if settings.encryption.old_key_list:
                print("nothing uses the keys of ENCRYPTION_OLD_KEYS any more: remove it")
            return 0
        finally:
            lock.release()
            await store.close()

    return asyncio.run(run())


HANDLERS: dict[str, Handler] = {
    "token": _token,
    "audit": _audit,
    "backup": _backup,
    "restore": _restore,
    "rotate-key": _rotate_key,
}
