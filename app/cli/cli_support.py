"""What the command groups share: printing, dates, progress bars, and opening the stored data."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.settings import Settings

if TYPE_CHECKING:
    from memory.delivery.deliverer import Deliverer
    from memory.store.conversation_store import ConversationStore
    from memory.store.outbox import Outbox
    from memory.store.voice_profiles import SpeakerStore


__all__ = [
    "Commands",
    "Handler",
    "LocalDelivery",
    "drain_with_progress",
    "local_delivery",
    "msgspec_builtins",
    "open_speakers",
    "print_json",
    "progress_bar",
    "unlock_data",
    "when",
]

Handler = Callable[[argparse.Namespace], int]
"""Runs one command; returns its exit status."""
Commands = argparse._SubParsersAction  # the `add_subparsers` object of the root parser


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


def msgspec_builtins(value: Any) -> Any:
    """A msgspec struct as JSON-ready builtins."""
    import msgspec

    return msgspec.to_builtins(value)


def when(text: str) -> float:
    """An ISO 8601 date or date-time (UTC unless it says otherwise), or epoch seconds."""
    from datetime import UTC, datetime

    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date (2025-10-28), date-time or epoch") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


async def open_speakers(settings: Settings) -> tuple[SpeakerStore, Callable[[], Awaitable[None]]]:
    """The voice profile store over the configured database, and how to close it."""
    from memory.store.conversation_store import ConversationStore
    from memory.store.voice_profiles import SpeakerStore

    store = await ConversationStore.open(settings.database_url)
    return SpeakerStore(store.engine), store.close


async def drain_with_progress(deliverer: Deliverer, ids: list[int]) -> dict[str, int]:
    """Wait until outbox records ``ids`` are delivered or dead, with a progress bar on a terminal."""
    from tqdm import tqdm

    with tqdm(total=len(ids), unit="record", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:

        def show(now: dict[str, int]) -> None:
            bar.n = now["done"] + now["dead"]
            bar.set_postfix(failing=now["failing"], dead=now["dead"])
            bar.refresh()

        return await deliverer.drain(ids, progress=show)


def progress_bar() -> tuple[Any, Callable[[str, int, int], None]]:
    """A tqdm bar in bytes on a terminal, and the :data:`app.ops.backup_archive.Hook` that moves it."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, file=sys.stderr, disable=not sys.stderr.isatty())

    def hook(name: str, done: int, total: int) -> None:
        bar.total = total
        bar.set_description(name, refresh=False)
        bar.n = done
        bar.refresh()

    return bar, hook


def unlock_data(settings: Settings) -> None:
    """Open the database and load the encryption key that fits it (:func:`app.ops.keys.unlock`).

    Raises:
        SettingsError: the key does not fit the stored data, or is missing.
    """
    from app.ops.keys import unlock
    from memory.store.conversation_store import ConversationStore

    async def run() -> None:
        store = await ConversationStore.open(settings.database_url)
        try:
            await unlock(settings, store.engine)
        finally:
            await store.close()

    asyncio.run(run())


@dataclass
class LocalDelivery:
    """The store and the outbox's deliverer, for a command that queues changes and waits for them."""

    store: ConversationStore
    outbox: Outbox
    deliverer: Deliverer
    here: bool  # this command delivers (no running service holds the delivery lock)

    @property
    def who(self) -> str:
        """Who delivers, for people."""
        return "delivering here" if self.here else "the running service delivers"

    async def drain(self, ids: list[int]) -> dict[str, int]:
        """Deliver here if this command may, and wait until records ``ids`` are delivered or dead."""
        if self.here:
            self.deliverer.start()
        return await drain_with_progress(self.deliverer, ids)

    async def undelivered(self, name: str, what: str, state: dict[str, int], ids: list[int], hint: str) -> bool:
        """Say so on stderr when some of ``ids`` wait for a retry or are dead; whether any are."""
        if not (state["pending"] or state["dead"]):
            return False
        error = await self.outbox.last_error(ids)
        print(
            f"{name}: {state['pending']} {what} wait for a retry and {state['dead']} are dead; last error: {error}. "
            f"{hint}",
            file=sys.stderr,
        )
        return True


@contextlib.asynccontextmanager
async def local_delivery(settings: Settings, sinks: tuple[str, ...]) -> AsyncIterator[LocalDelivery]:
    """The configured store, search and sinks ``sinks``; delivery here unless a running service delivers."""
    from app.service.outbound import delivery_for, memory_search, reembed_if_changed
    from core.metrics import Metrics
    from memory.delivery.deliverer import DeliveryLock
    from memory.store.conversation_store import ConversationStore

    store = await ConversationStore.open(settings.database_url, sinks=sinks)
    search = memory_search(settings)
    outbox, deliverer = delivery_for(settings, store, search, Metrics(), sinks=sinks)
    lock = DeliveryLock(settings.server.data_dir)
    here = lock.acquire()
    try:
        if here:  # a running service checks this itself when it starts
            queued = await reembed_if_changed(search, store)
            if queued:
                print(
                    f"the embedding model changed: the memory index's vectors were dropped and {queued} "
                    "conversation(s) queued to be embedded again",
                    file=sys.stderr,
                )
        yield LocalDelivery(store, outbox, deliverer, here)
    finally:
        await deliverer.stop()
        lock.release()
        await search.close()
        await store.close()
