"""The speech-to-text contracts: whole utterances (local engines) and streaming services."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from types import TracebackType

    import numpy as np
    from numpy.typing import NDArray

    from ingest.schema import AsrSegment, StreamingResult

__all__ = ["SpeechToText", "StreamingConnection", "StreamingSpeechToText"]


class SpeechToText(ABC):
    """Transcribes a whole utterance of 16 kHz mono float32 audio.

    ``transcribe`` is blocking and is called from worker threads, several at once: an engine must
    be thread-safe or serialise internally. ``name`` goes into each segment's ``stt_provider``.
    """

    name: str = "unknown"

    @abstractmethod
    def transcribe(
        self, audio: NDArray[np.float32], language: str, *, timestamps: bool = True, words: bool = False
    ) -> list[AsrSegment]:
        """Recognise ``audio``; segment times are seconds from the start of ``audio``.

        With ``timestamps=False`` the caller accepts a single segment spanning the whole audio,
        which lets an engine take a faster path for short utterances. With ``words=True`` each
        segment also carries its words and their times, where the engine can tell them.
        """

    @abstractmethod
    def supports_language(self, language: str) -> bool:
        """Whether ``language`` (an ISO 639-1 code, or ``multi``/``auto``) can be transcribed."""


class StreamingConnection(ABC):
    """One open stream to a streaming speech-to-text service.

    Send PCM with :meth:`send_audio` while iterating :meth:`results` in another task. The
    results end when the service closes the connection normally, as it does after
    :meth:`close_stream` once it has transcribed everything. A dropped connection raises
    :class:`~core.errors.SpeechToTextError` (``retryable``) from :meth:`results` and from any
    send. :meth:`aclose` (or leaving ``async with``) releases the connection and is safe to call
    more than once.
    """

    @abstractmethod
    async def send_audio(self, pcm: bytes) -> None:
        """Send s16le mono PCM at the sample rate the connection was opened with."""

    @abstractmethod
    async def keep_alive(self) -> None:
        """Tell the service the stream is alive while no audio is sent."""

    @abstractmethod
    async def finalize(self) -> None:
        """Ask for final results of all the audio sent so far."""

    @abstractmethod
    async def close_stream(self) -> None:
        """No more audio: the service sends its last results, then closes the connection."""

    @abstractmethod
    def results(self) -> AsyncIterator[StreamingResult]:
        """The service's results, in order, until the service closes the connection."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the connection now."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()


class StreamingSpeechToText(ABC):
    """A speech-to-text service that transcribes a live stream and tells its speakers apart.

    ``name`` goes into each segment's ``stt_provider``. Opening connections must be safe from
    several streams at once.
    """

    name: str = "unknown"

    @abstractmethod
    async def open(self, *, sample_rate: int, language: str) -> StreamingConnection:
        """Open a connection for s16le mono PCM at ``sample_rate``.

        Raises:
            SpeechToTextError: the service refused or could not be reached; ``retryable`` says
                whether trying again may help.
        """

    @abstractmethod
    def supports_language(self, language: str) -> bool:
        """Whether ``language`` (an ISO 639-1 code, or ``multi``) can be transcribed."""
