"""What waits to reach the sinks: the `outbox`, `backfill`, and deleting on purpose (`erase`, `purge`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from app.settings import Settings, load_settings

if TYPE_CHECKING:
    pass

from app.cli.cli_support import Commands, Handler, local_delivery, msgspec_builtins, print_json, when

__all__ = ["HANDLERS", "add_parsers"]


def add_parsers(commands: Commands) -> None:
    """Add this group's commands."""
    outbox = commands.add_parser(
        "outbox",
        help="list, retry or purge changes waiting for delivery (dead letters)",
        description="Every stored change waits in the outbox until each sink (the memory index, Letta) accepted "
        "it. After OUTBOX_MAX_ATTEMPTS failures a record is dead: it no longer holds up the user's later "
        "records. List them, retry them once the cause is fixed, or purge them.",
    )
    verbs = outbox.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="list records (default: pending and dead)")
    listing.add_argument("--status", choices=("pending", "dead", "done", "all"), help="only records of this status")
    listing.add_argument("--uid", help="only this user's records")
    listing.add_argument("--sink", choices=("index", "letta"), help="only this sink's records")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default: 100)")
    listing.add_argument("--json", action="store_true", help="print the records as JSON to stdout")
    for verb, text in (("retry", "make dead records pending again, due now"), ("purge", "delete dead records")):
        cmd = verbs.add_parser(verb, help=text)
        which = cmd.add_mutually_exclusive_group(required=True)
        which.add_argument("ids", nargs="*", type=int, default=[], metavar="ID", help="record ids")
        which.add_argument("--all", action="store_true", help="every dead record")

    backfill = commands.add_parser(
        "backfill",
        help="deliver stored conversations again (a new or changed agent or index)",
        description="Queue stored conversations for delivery again and wait until they are delivered. Delivery "
        "is idempotent: what the agent and the index already hold is left alone, what is missing is added. "
        "A running `omi-letta serve` delivers them; otherwise this command does.",
    )
    backfill.add_argument("--uid", help="only this user's conversations (default: everyone's)")
    backfill.add_argument("--since", type=when, metavar="WHEN", help="only conversations ending at or after this")
    backfill.add_argument("--sink", choices=("index", "letta"), help="only this sink (default: every configured one)")
    backfill.add_argument(
        "--structure",
        action="store_true",
        help="instead, understand stored conversations that have no summary: their `structured` title, overview, "
        "action items and events, and the facts they reveal (LLM_MODEL; an extractive summary without one)",
    )
    backfill.add_argument("--force", action="store_true", help="with --structure: also those that have a summary")

    merge = commands.add_parser(
        "merge-agents",
        help="merge a user's duplicate Letta agents (several tagged omi-uid:<uid>) into one",
        description="Keep one of the Letta agents tagged omi-uid:<uid> (the one the service uses, or --keep), copy "
        "into it the passages the others wrote by themselves (not tagged omi; tagged merged-from:<agent>), delete "
        "the others, then deliver the user's stored conversations to the kept agent again, as `omi-letta "
        "backfill` does: what it holds stays, what only the others held is added. The deleted agents' chat "
        "history is not moved. Without --uid, every user with duplicates (`omi-letta doctor` lists them).",
    )
    merge.add_argument("--uid", help="only this user's agents (default: every user with more than one)")
    merge.add_argument("--keep", metavar="AGENT_ID", help="the agent to keep (needs --uid; default: the one in use)")
    merge.add_argument("--dry-run", action="store_true", help="only say what would be kept, copied and deleted")

    erase = commands.add_parser(
        "erase",
        help="erase everything of one user's: conversations (also in the memory index and Letta), voice "
        "profiles, API tokens, day summaries",
        description="Delete every conversation of the user with its turns, from the database, the memory index "
        "and their Letta agent (its passages and its recent_conversations block; the agent itself stays), and "
        "their voice profiles, API tokens and day summaries; then wait until the index and Letta have the "
        "deletions. A running `omi-letta serve` delivers them, and keeps a conversation it holds in progress "
        "(DELETE /v1/users/me/data erases that one too); otherwise this command delivers. It cannot be undone.",
    )
    erase.add_argument("--uid", required=True, help="whose data to erase")
    erase.add_argument("--json", action="store_true", help="print the counts as JSON to stdout")

    purge = commands.add_parser(
        "purge",
        help="delete conversations older than RETENTION_DAYS now (also in the memory index and Letta)",
        description="Delete every completed conversation that finished more than RETENTION_DAYS days ago (or "
        "--days N), from the database, the memory index and the Letta agents' passages, as `omi-letta serve` "
        "does at startup and every RETENTION_INTERVAL_S; then wait until the deletions are delivered. Voice "
        "profiles, API tokens and day summaries stay.",
    )
    purge.add_argument("--days", type=int, metavar="N", help="older than N days (default: RETENTION_DAYS)")
    purge.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    purge.add_argument("--json", action="store_true", help="print the counts as JSON to stdout")


def _outbox(args: argparse.Namespace) -> int:
    from core.conversation import iso
    from memory.store.conversation_store import ConversationStore
    from memory.store.outbox import Outbox

    settings = load_settings()

    async def run() -> Any:
        store = await ConversationStore.open(settings.database_url)
        outbox = Outbox(store.engine)
        try:
            if args.verb == "retry":
                return await outbox.retry(None if args.all else args.ids)
            if args.verb == "purge":
                return await outbox.purge(None if args.all else args.ids)
            statuses = ["pending", "dead"] if args.status is None else [] if args.status == "all" else [args.status]
            found = []
            for status in statuses or [None]:
                found += await outbox.records(status=status, uid=args.uid, sink=args.sink, limit=args.limit)
            return sorted(found, key=lambda r: r.id)[: args.limit]
        finally:
            await store.close()

    result = asyncio.run(run())
    if args.verb in ("retry", "purge"):
        done = "made pending again" if args.verb == "retry" else "deleted"
        print(f"{result} dead record(s) {done}")
        return 0 if result or args.all else 1
    if args.json:
        print_json([msgspec_builtins(r) for r in result])
        return 0
    if not result:
        print("the outbox holds no such record", file=sys.stderr)
    for r in result:
        print(
            f"{r.id:>7}  {r.status:<7}  {r.sink:<5}  {r.action:<7}  uid {r.uid}  conv {r.conversation_id[:8]}  "
            f"{len(r.turn_ids)} turn(s)  {r.attempts} attempt(s)  queued {iso(r.created_at)[:19]}"
            + (f"\n         last error: {r.last_error}" if r.last_error else "")
        )
    return 0


def _backfill(args: argparse.Namespace) -> int:
    settings = load_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sinks = tuple(s for s in settings.sinks if args.sink in (None, s))
    if not sinks:
        print(f"omi-letta backfill: the {args.sink} sink is not configured (LETTA_DELIVERY=false)", file=sys.stderr)
        return 2

    if args.structure:
        return asyncio.run(_structure(args, settings, sinks))

    async def run() -> int:
        async with local_delivery(settings, sinks) as delivery:
            store = delivery.store
            keys = await store.keys(uid=args.uid, since=args.since)
            turns = sum(n for _, _, n in keys)
            if not keys:
                print("no stored conversation matches", file=sys.stderr)
                return 0
            started = time.monotonic()
            ids: list[int] = []
            for uid, conversation_id, _ in keys:
                ids += await store.requeue(uid, conversation_id, sinks)
            queued = f"{len(keys)} conversation(s), {turns} turn(s) queued for {', '.join(sinks)}"
            print(f"{queued}; {delivery.who}", file=sys.stderr)
            state = await delivery.drain(ids)
            elapsed = time.monotonic() - started
            print(
                f"delivered {state['done']} of {len(ids)} record(s) ({turns} turns) in {elapsed:.1f} s "
                f"({turns / max(elapsed, 1e-9):.0f} turns/s)",
                file=sys.stderr,
            )
            hint = "`omi-letta outbox list` shows them."
            return 1 if await delivery.undelivered("omi-letta backfill", "record(s)", state, ids, hint) else 0

    return asyncio.run(run())


def _merge_agents(args: argparse.Namespace) -> int:
    from memory.letta.agent_claims import AgentClaims
    from memory.letta.agent_merge import duplicates, merge_agents, plan_merge
    from memory.letta.ledger import Ledger
    from memory.letta.letta_client import open_client
    from memory.redis_state import worker_id

    settings = load_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    name = "omi-letta merge-agents"
    if not settings.letta.delivery:
        print(f"{name}: Letta delivery is off (LETTA_DELIVERY=false)", file=sys.stderr)
        return 2
    if args.keep and not args.uid:
        print(f"{name}: --keep needs --uid", file=sys.stderr)
        return 2

    async def run() -> int:
        client = open_client(settings.letta)
        try:
            async with local_delivery(settings, ("letta",)) as delivery:
                claims = AgentClaims(delivery.store.engine, f"cli:{worker_id()}")
                uids = [args.uid] if args.uid else list(await duplicates(client))
                if not uids:
                    print("no user has more than one Letta agent", file=sys.stderr)
                    return 0
                for uid in uids:
                    try:
                        plan = await plan_merge(client, claims, uid, keep=args.keep)
                    except ValueError as exc:
                        print(f"{name}: {exc}", file=sys.stderr)
                        return 1
                    if not plan.drop:
                        print(f"uid {uid}: one agent ({plan.keep}); nothing to merge")
                        continue
                    dropped = ", ".join(f"{a} ({plan.notes[a]} passage(s) of its own)" for a in plan.drop)
                    print(f"uid {uid}: keeping {plan.keep}; merging and deleting {dropped}")
                    if args.dry_run:
                        continue
                    copied = await merge_agents(client, claims, Ledger(delivery.store.engine), plan)
                    print(f"uid {uid}: copied {copied} passage(s) into {plan.keep}, deleted {len(plan.drop)} agent(s)")
                    ids: list[int] = []
                    for owner, conversation_id, _ in await delivery.store.keys(uid=uid):
                        ids += await delivery.store.requeue(owner, conversation_id, ("letta",))
                    print(f"uid {uid}: {len(ids)} record(s) queued for the kept agent; {delivery.who}", file=sys.stderr)
                    state = await delivery.drain(ids)
                    hint = f"`omi-letta backfill --uid {uid} --sink letta` delivers them again."
                    if await delivery.undelivered(name, "record(s)", state, ids, hint):
                        return 1
            return 0
        finally:
            await client.close()

    return asyncio.run(run())


async def _structure(args: argparse.Namespace, settings: Settings, sinks: tuple[str, ...]) -> int:
    """``backfill --structure``: understand old conversations here (the service must not be delivering)."""
    from app.service.outbound import understanding_for
    from memory.delivery.index_sink import IndexSink
    from memory.letta.letta_sink import LettaSink

    if settings.llm.understand == "off":
        print("omi-letta backfill --structure: UNDERSTAND_CONVERSATIONS=off", file=sys.stderr)
        return 2
    async with local_delivery(settings, sinks) as delivery:
        if not delivery.here:
            print(
                "omi-letta backfill --structure: a running `omi-letta serve` holds the memory index; stop it first",
                file=sys.stderr,
            )
            return 2
        found = {type(s): s for s in delivery.deliverer.sinks}
        index, letta = found.get(IndexSink), found.get(LettaSink)
        search = index.search if isinstance(index, IndexSink) else None
        understanding = understanding_for(
            settings, delivery.store, search, letta if isinstance(letta, LettaSink) else None
        )
        assert understanding is not None
        keys = await delivery.store.keys(uid=args.uid, since=args.since)
        done = {"llm": 0, "extractive": 0}
        started = time.monotonic()
        for uid, conversation_id, _ in keys:
            understood = await understanding.conversation(uid, conversation_id, force=args.force)
            if understood is not None:
                done[understood.by] += 1
        skipped = len(keys) - sum(done.values())
        print(
            f"{sum(done.values())} conversation(s) understood ({done['llm']} by the model, {done['extractive']} "
            f"extractive), {skipped} skipped (a summary already, or empty) in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
        )
    return 0


def _forget(args: argparse.Namespace) -> int:
    """``erase --uid U`` and ``purge``: delete through the outbox, then wait for the sinks."""
    from app.ops.retention import Retention
    from core.conversation import iso

    settings = load_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    name = f"omi-letta {args.command}"
    days = 0
    if args.command == "purge":
        days = settings.retention.days if args.days is None else args.days
        if args.days is not None and args.days < 1:
            print(f"{name}: --days must be at least 1", file=sys.stderr)
            return 2
        if days <= 0:
            print(f"{name}: RETENTION_DAYS is 0, which keeps conversations forever; give --days N", file=sys.stderr)
            return 2

    async def run() -> int:
        async with local_delivery(settings, settings.sinks) as delivery:
            store, here = delivery.store, delivery.here
            retention = Retention.over(store, settings.server.data_dir, days=days)
            if args.command == "purge":
                cutoff = iso(retention.cutoff() or 0.0)[:16].replace("T", " ")
                if args.dry_run:
                    found = await retention.expired()
                    counts = {"conversations": len(found), "turns": sum(n for _, _, n in found)}
                    if args.json:
                        print_json(counts)
                    else:
                        print(
                            f"{counts['conversations']} conversation(s) with {counts['turns']} turn(s) finished "
                            f"before {cutoff} UTC ({days} day(s) ago); nothing deleted (--dry-run)"
                        )
                    return 0
                done = await retention.purge()
                what = f"deleted {done.conversations} conversation(s) with {done.turns} turn(s) that finished before "
                what += f"{cutoff} UTC ({days} day(s) ago)"
            else:
                done = await retention.erase(args.uid, keep_in_progress=not here)
                what = (
                    f"erased uid {args.uid}: {done.conversations} conversation(s) with {done.turns} turn(s), "
                    f"{done.speakers} voice profile(s), {done.tokens} API token(s), "
                    f"{done.day_summaries} day summary(ies)"
                )
                if not here and await store.in_progress(args.uid) is not None:
                    what += (
                        "; the running service holds a conversation of theirs in progress, which was kept: "
                        "DELETE /v1/users/me/data erases it too, or run this again once it closed"
                    )
            ids = done.records
            state = {"done": 0, "dead": 0, "pending": 0, "failing": 0}
            if not args.json:
                print(what)
            if ids:
                print(f"{len(ids)} deletion(s) queued for {', '.join(store.sinks)}; {delivery.who}", file=sys.stderr)
                started = time.monotonic()
                state = await delivery.drain(ids)
                print(
                    f"delivered {state['done']} of {len(ids)} deletion(s) in {time.monotonic() - started:.1f} s",
                    file=sys.stderr,
                )
            if args.json:
                print_json({**({"uid": args.uid} if args.command == "erase" else {}), **done.counts(), **state})
            hint = "`omi-letta serve` delivers them; `omi-letta outbox list` shows them."
            return 1 if await delivery.undelivered(name, "deletion(s)", state, ids, hint) else 0

    return asyncio.run(run())


HANDLERS: dict[str, Handler] = {
    "outbox": _outbox,
    "backfill": _backfill,
    "merge-agents": _merge_agents,
    "erase": _forget,
    "purge": _forget,
}
