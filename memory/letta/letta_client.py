"""The Letta client as this service uses it: one per server, and its errors as ours.

The client never retries by itself (``max_retries=0``): the outbox does, after the sink checked
what the agent already holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx
from letta_client import APIConnectionError, APIError, APIStatusError, APITimeoutError, AsyncLetta

from core.errors import DeliveryError

if TYPE_CHECKING:
    from memory.memory_settings import LettaSettings

__all__ = ["letta_errors", "open_client", "unsent"]


def open_client(settings: LettaSettings) -> AsyncLetta:
    """A client of the configured Letta server (LETTA_BASE_URL, else the local one)."""
    return AsyncLetta(
        base_url=settings.url,
        api_key=settings.api_key or None,
        project_id=settings.project_id or None,
        max_retries=0,
        timeout=settings.timeout_s,
    )


@contextlib.asynccontextmanager
async def letta_errors(operation: str) -> AsyncIterator[None]:
    """Translate letta-client errors to :class:`DeliveryError` (status and operation only: no transcript text).

    Letta being down, slow or overloaded (no connection, a timeout, 408, 429 or 5xx) is ``transient``.
    """
    try:
        yield
    except APIStatusError as exc:
        busy = exc.status_code in (408, 429) or exc.status_code >= 500
        raise DeliveryError(f"Letta answered {exc.status_code} to {operation}", transient=busy) from exc
    except APITimeoutError as exc:
        raise DeliveryError(f"Letta did not answer {operation} in time", transient=True) from exc
    except APIConnectionError as exc:
        raise DeliveryError(f"Letta is unreachable ({operation})", transient=True) from exc
    except APIError as exc:
        raise DeliveryError(f"Letta failed {operation}: {type(exc).__name__}") from exc


def unsent(exc: BaseException) -> bool:
    """Whether the request surely never reached Letta (no connection could be made)."""
    cause = exc.__cause__
    return isinstance(cause, APIConnectionError) and isinstance(cause.__cause__, httpx.ConnectError)
